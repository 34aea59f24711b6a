"""The published conventions of the video SR test sets and of challenge tables, as ``eval
--preset`` applies them (docs/metrics.md cites each source). Pure Python: the parser reads the names."""

from __future__ import annotations

from pathlib import Path

LISTS = Path(__file__).parent.parent / "data"

# ``listed``: clips named ``folder/sub-folder`` in a nested layout (``00001/0266/im1.png``), from the list file.
VIMEO = dict(options=dict(y_channel=True, crop_border=0), centre_frame=True)
PRESETS = {
    "REDS4": dict(options=dict(y_channel=False, crop_border=0), clips=("000", "011", "015", "020"), centre_frame=False),
    "Vid4": dict(options=dict(y_channel=True, crop_border=0), clips=None, centre_frame=False),
    "UDM10": dict(options=dict(y_channel=True, crop_border=0), clips=None, centre_frame=False),
    # TecoGAN's metrics.py: its PSNR and LPIPS columns on crop_8x8 frames past its cut, beside tOF and tLP.
    "TecoGAN": dict(options={}, clips=None, centre_frame=False, renames=dict(psnr="tecogan_psnr", lpips_alex="tecogan_lpips")),
    "Vimeo90K-T": dict(VIMEO, listed="vimeo90k/meta_info_Vimeo90K_test_GT.txt"),
    **{
        f"Vimeo90K-T-{motion}": dict(VIMEO, listed=f"vimeo90k/meta_info_Vimeo90K_test_{motion}_GT.txt")
        for motion in ("fast", "medium", "slow")
    },
}


# Image presets: a challenge table's one score, with its parts as components, on folders of images.
IMAGE_PRESETS = {
    # NTIRE 2025 ×4 perceptual track: whole RGB images, no crop (its metrics.py).
    "NTIRE2025-perceptual": dict(metrics="ntire2025_perceptual"),
}


def with_image_preset(options):
    """``options`` (an ``EvalOptions``) with an image preset's metric (its parts keep their own
    conventions: no crop, RGB), and the preset's name as the dataset unless one is given."""
    from dataclasses import replace

    preset = IMAGE_PRESETS[options.preset]
    return replace(options, metrics=preset["metrics"], crop_border=None, y_channel=False, dataset=options.dataset or options.preset)


def listed_clips(name: str) -> tuple[str, ...]:
    """A test set's official clip list shipped with the client (``data/``): ``folder/sub-folder`` names."""
    with open(LISTS / name, encoding="utf-8") as handle:
        return tuple(line.split()[0] for line in handle if line.strip())


def preset_setup(name: str | None, metrics: str, options: dict) -> tuple[str, dict, dict | None]:
    """The metrics and options a preset sets (the user's own options win, and are recorded beside
    them), and the preset."""
    if name is None:
        return metrics, options, None
    preset = dict(PRESETS[name])
    if "listed" in preset:
        preset["clips"] = listed_clips(preset.pop("listed"))
    names = metrics.split(",")
    if preset["centre_frame"] and any(m in ("tof", "tlp") for m in names):
        raise ValueError(f"--preset {name} scores the centre frame of each clip only: tof and tlp need consecutive frames")
    renames = preset.pop("renames", {})
    if renames:
        other = [m for m in names if m not in renames and m not in renames.values() and m not in ("tof", "tlp")]
        if other:
            raise ValueError(f"--preset {name} has the columns {sorted(renames)}, tof and tlp (its metrics.py); not {other}")
        metrics = ",".join(renames.get(m, m) for m in names)
    return metrics, {**preset["options"], **options}, dict(name=name, **preset)
