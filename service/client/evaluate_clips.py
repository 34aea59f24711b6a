"""``loss-service eval`` on a dataset of clips: ``GT/<clip>/<frame>.png`` beside ``SR/<clip>/...``
(REDS4, Vid4, UDM10, SPMCS), or folders of videos paired by stem. Each clip goes to
``POST /v1/score/clip``; the JSON holds per-frame, per-pair (tof, tlp) and per-clip values, and per
dataset BasicSR's mean over clips with the frame-weighted mean beside it; the CSV one row per frame.
With ``--store`` each clip's mean is one row (image = the clip's name), so the leaderboard's mean
of a clip dataset is BasicSR's mean over clips.

Torch-free: it runs on the client-only install.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from losses.clips.means import dataset_means

from .errors import LossServiceError
from .store import ResultsStore, Row, StoreError, conventions_hash
from .sync import LossClient

VIDEO_SUFFIXES = (".mp4", ".mkv", ".avi", ".mov", ".y4m")
FRAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".npy")


LISTS = Path(__file__).parent / "data"


def listed_clips(name: str) -> tuple[str, ...]:
    """A test set's official clip list shipped with the client (``data/``): ``folder/sub-folder`` names."""
    with open(LISTS / name, encoding="utf-8") as handle:
        return tuple(line.split()[0] for line in handle if line.strip())


# The published conventions of the VSR test sets (docs/metrics.md cites each source). ``listed``:
# clips named ``folder/sub-folder`` in a nested layout (``00001/0266/im1.png``), from the list file.
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


def centre_frame(clip: Path | list[Path]) -> list[Path]:
    """Vimeo90K-T's convention: the centre frame of a 7-frame clip (index 3)."""
    if not isinstance(clip, list):
        raise ValueError("the centre-frame convention needs clips given as folders of frames")
    return [clip[len(clip) // 2]]


def frame_number(name: str) -> int:
    """The number in a frame's name, as BasicSR and TecoGAN order frames (``9.png`` before ``10.png``)."""
    return int("".join(filter(str.isdigit, name)) or -1)


def clips_in(folder: Path) -> dict[str, Path | list[Path]]:
    """A dataset folder's clips by name: a sub-folder's frames in frame order, or a video file."""
    found: dict[str, Path | list[Path]] = {}
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            frames = sorted(p for p in entry.iterdir() if p.suffix.lower() in FRAME_SUFFIXES and not p.name.startswith("."))
            if frames:
                found[entry.name] = sorted(frames, key=lambda p: frame_number(p.name))
        elif entry.suffix.lower() in VIDEO_SUFFIXES:
            found[entry.stem] = entry
    return found


def nested_clips(folder: Path, names: tuple[str, ...]) -> tuple[dict[str, list[Path]], list[str], int]:
    """The listed clips of a two-level layout (``00001/0266/im1.png``): found clips in list order,
    the listed ones missing, and how many other clip folders were left out."""
    found: dict[str, list[Path]] = {}
    for name in names:
        if (folder / name).is_dir():
            frames = sorted(
                (p for p in (folder / name).iterdir() if p.suffix.lower() in FRAME_SUFFIXES), key=lambda p: frame_number(p.name)
            )
            if frames:
                found[name] = frames
    present = {f"{outer.name}/{inner.name}" for outer in folder.iterdir() if outer.is_dir() for inner in outer.iterdir() if inner.is_dir()}
    return found, [name for name in names if name not in found], len(present - set(names))


def is_clip_dataset(folder: Path) -> bool:
    """A folder of clips: sub-folders of frames or video files, and no images of its own."""
    entries = [entry for entry in folder.iterdir() if not entry.name.startswith(".")]
    if any(entry.is_file() and entry.suffix.lower() in FRAME_SUFFIXES for entry in entries):
        return False
    return bool(clips_in(folder))


def clips_of(folder: Path, preset: dict | None, say) -> dict:
    """The preset's clips (REDS4's four; Vimeo-90K's listed ones in their nested layout), or every clip."""
    wanted = preset and preset["clips"]
    if wanted and all("/" in name for name in wanted):
        found, missing, skipped = nested_clips(folder, wanted)
        say(f"{folder}: {len(found)} of {len(wanted)} listed clips; {skipped} other clip folder(s) left out")
        if missing:
            say(f"{folder}: {len(missing)} listed clip(s) missing: {', '.join(missing[:10])}{' …' if len(missing) > 10 else ''}")
        return found
    return {name: clip for name, clip in clips_in(folder).items() if not wanted or name in wanted}


def run_clip_eval(args, models: dict[str, Path], options: dict, console) -> int:
    try:
        args.metrics, options, preset = preset_setup(args.preset, args.metrics, options)
    except ValueError as exc:
        console.print(f"[red]{exc}[/red]")
        return 2
    say = console.print if not args.quiet else (lambda line: None)
    gt_clips = clips_of(Path(args.gt), preset, say)
    done, conventions = resumed(args) if args.resume else ({}, None)
    results, failures, unpaired = {}, {}, {}
    with LossClient(args.url, api_key=args.api_key, timeout=args.timeout) as client:
        for model, folder in models.items():
            sr_clips = clips_of(folder, preset, say)
            unpaired[model] = dict(gt=sorted(set(gt_clips) - set(sr_clips)), sr=sorted(set(sr_clips) - set(gt_clips)))
            paired = sorted(set(gt_clips) & set(sr_clips))
            results[model] = {name: clip for name, clip in done.get(model, {}).items() if name in paired}
            failures[model] = []
            if results[model] and not args.quiet:
                console.print(f"{model}: {len(results[model])} clip(s) already in {args.json} (--resume)")
            for name in [name for name in paired if name not in results[model]]:
                try:
                    sr, gt = sr_clips[name], gt_clips[name]
                    if preset and preset["centre_frame"]:
                        sr, gt = centre_frame(sr), centre_frame(gt)
                    answer = client.score_clip(sr, gt, args.metrics, **options)
                except (LossServiceError, OSError, ValueError) as exc:
                    failures[model].append(dict(clip=name, status=getattr(exc, "status", None), message=str(exc)))
                    console.print(f"[red]{model} / {name}: {exc}[/red]")
                    continue
                conventions = conventions or answer["conventions"]
                results[model][name] = {key: answer[key] for key in ("per_frame", "temporal", "frames", "per_clip")}
                results[model][name]["sources"] = source_record(sr)
                if not args.quiet:
                    console.print(f"{model} / {name}: " + ", ".join(f"{k} {v:.4f}" for k, v in answer["per_clip"].items() if v is not None))
    report = dict(
        format="loss-service-eval-clips",
        version=1,
        dataset=args.dataset or args.preset,
        scale=args.scale,
        metrics=args.metrics,
        backend=getattr(args, "backend", "server"),
        options=options,
        preset=preset and dict(preset, clips=list(preset["clips"] or [])),
        conventions=conventions,
        gt_sources={
            name: source_record(centre_frame(clip) if preset and preset["centre_frame"] else clip) for name, clip in gt_clips.items()
        },
        models={
            model: dict(
                sr_dir=str(models[model].resolve()),
                clips=results[model],
                dataset=dataset_means(results[model]),
                failures=failures[model],
                unpaired=unpaired[model],
            )
            for model in models
        },
    )
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    if args.store and conventions is not None:
        try:
            with ResultsStore(args.store) as store:
                store.add(clip_rows(args, results, conventions), conventions)
        except StoreError as exc:
            console.print(f"[red]{exc}[/red]")
            return 2
    write_frames_csv(Path(args.out), results)
    for model in models:
        means = report["models"][model]["dataset"]
        console.print(
            f"[bold]{model}[/bold]: {len(results[model])} clip(s); "
            + "; ".join(
                f"{name} {m['clip_mean']:.4f} (frame-weighted {m['frame_weighted_mean']:.4f})"
                for name, m in means.items()
                if m["clip_mean"] is not None
            )
        )
        for role, names in unpaired[model].items():
            if names:
                console.print(f"[yellow]{model}: {role} clips without a partner: {', '.join(names)}[/yellow]")
    missing = any(unpaired[model]["gt"] for model in models)
    return 1 if missing or any(failures.values()) else 0


def clip_rows(args, results: dict[str, dict[str, dict]], conventions: dict) -> list[Row]:
    """One results-store row per model, clip and metric: the clip's mean (image = the clip's name)."""
    digest = conventions_hash(conventions)
    return [
        Row(model, args.dataset or args.preset or "", args.scale or 0, name, metric, value, digest, checkpoint=args.checkpoint or "")
        for model, clips in results.items()
        for name, clip in clips.items()
        for metric, value in clip["per_clip"].items()
    ]


def resumed(args) -> tuple[dict[str, dict], dict | None]:
    """The clips an earlier run wrote to ``--json`` (model → clip → values) and its conventions."""
    if not args.json or not Path(args.json).exists():
        return {}, None
    data = json.loads(Path(args.json).read_text())
    if data.get("format") != "loss-service-eval-clips" or data.get("metrics") != args.metrics:
        return {}, None  # another kind of run: score everything again
    return {model: entry.get("clips", {}) for model, entry in data.get("models", {}).items()}, data.get("conventions")


def source_record(clip: Path | list[Path]) -> str | list[str]:
    """What a clip was read from, for the report's frame strip: its frame files in order, or the video."""
    return [str(path.resolve()) for path in clip] if isinstance(clip, list) else str(clip.resolve())


def write_frames_csv(path: Path, results: dict[str, dict[str, dict]]) -> None:
    """One row per model, clip and frame; a temporal value sits on the frame t of its pair (t−1, t)."""
    metrics = sorted({m for clips in results.values() for clip in clips.values() for m in (*clip["per_frame"], *clip["temporal"])})
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["model", "clip", "frame", *metrics])
        for model, clips in results.items():
            for name, clip in clips.items():
                by_frame: dict[int, dict[str, float | None]] = {}
                for metric, values in {**clip["per_frame"], **clip["temporal"]}.items():
                    for frame, value in zip(clip["frames"][metric], values):
                        by_frame.setdefault(frame, {})[metric] = value
                for frame in sorted(by_frame):
                    writer.writerow([model, name, frame, *(by_frame[frame].get(m, "") for m in metrics)])
