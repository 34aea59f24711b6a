"""``eval`` of a dataset of clips: ``GT/<clip>/<frame>.png`` beside ``SR/<clip>/...`` (REDS4, Vid4,
UDM10, SPMCS), or folders of videos paired by stem → each clip scored by ``POST /v1/score/clip`` →
per-frame, per-pair (tof, tlp) and per-clip rows → per dataset BasicSR's mean over clips with the
frame-weighted mean beside it. With ``--store`` each clip's mean is one row (image = the clip's
name), so the leaderboard's mean of a clip dataset is BasicSR's mean over clips."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

from losses.clips.means import dataset_means

from ..errors import LossServiceError
from ..store import StoreError
from ..sync import LossClient
from . import output
from .options import EvalOptions
from .presets import preset_setup

VIDEO_SUFFIXES = (".mp4", ".mkv", ".avi", ".mov", ".y4m")
FRAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".npy")


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


def resumed(options: EvalOptions) -> tuple[dict[str, dict], dict | None]:
    """The clips an earlier run wrote to ``--json`` (model → clip → values) and its conventions."""
    if not options.json or not Path(options.json).exists():
        return {}, None
    data = json.loads(Path(options.json).read_text())
    if data.get("format") != "loss-service-eval-clips" or data.get("metrics") != options.metrics:
        return {}, None  # another kind of run: score everything again
    return {model: entry.get("clips", {}) for model, entry in data.get("models", {}).items()}, data.get("conventions")


def source_record(clip: Path | list[Path]) -> str | list[str]:
    """What a clip was read from, for the report's frame strip: its frame files in order, or the video."""
    return [str(path.resolve()) for path in clip] if isinstance(clip, list) else str(clip.resolve())


@dataclass
class ClipRun:
    """What a clip run scores: the preset's metrics and options, each model's clips paired with the
    GT's, and what it has (resumed clips, failures) as it goes."""

    options: EvalOptions
    metrics: str
    metric_options: dict
    preset: dict | None
    gt_clips: dict
    sr_clips: dict[str, dict]
    conventions: dict | None
    results: dict[str, dict] = field(default_factory=dict)
    failures: dict[str, list] = field(default_factory=dict)
    unpaired: dict[str, dict] = field(default_factory=dict)

    def todo(self) -> list[tuple[str, str, list[Path] | Path, list[Path] | Path]]:
        """(model, clip, sr, gt) of every paired clip not resumed; one centre frame each for Vimeo-90K."""
        centred = bool(self.preset and self.preset["centre_frame"])
        work = []
        for model, sr_clips in self.sr_clips.items():
            for name in sorted(set(self.gt_clips) & set(sr_clips)):
                if name not in self.results[model]:
                    sr, gt = sr_clips[name], self.gt_clips[name]
                    work.append((model, name, *((centre_frame(sr), centre_frame(gt)) if centred else (sr, gt))))
        return work

    def add(self, model: str, name: str, answer: dict, sr: list[Path] | Path) -> None:
        """A scored clip: its answer's values and the files its ``sr`` frames were read from."""
        self.conventions = self.conventions or answer.get("conventions")
        self.results[model][name] = {key: answer[key] for key in ("per_frame", "temporal", "frames", "per_clip")}
        self.results[model][name]["sources"] = source_record(sr)


def prepare(options: EvalOptions, models: dict[str, Path], console) -> ClipRun | None:
    """The clips to score, the resumed ones counted; None once a bad preset is said."""
    try:
        metrics, metric_options, preset = preset_setup(options.preset, options.metrics, options.metric_options)
    except ValueError as exc:
        console.print(f"[red]{exc}[/red]")
        return None
    options = replace(options, metrics=metrics)
    say = console.print if not options.quiet else (lambda line: None)
    gt_clips = clips_of(Path(options.gt), preset, say)
    done, conventions = resumed(options) if options.resume else ({}, None)
    run = ClipRun(options, metrics, metric_options, preset, gt_clips, {}, conventions)
    for model, folder in models.items():
        sr_clips = run.sr_clips[model] = clips_of(folder, preset, say)
        run.unpaired[model] = dict(gt=sorted(set(gt_clips) - set(sr_clips)), sr=sorted(set(sr_clips) - set(gt_clips)))
        paired = set(gt_clips) & set(sr_clips)
        run.results[model] = {name: clip for name, clip in done.get(model, {}).items() if name in paired}
        run.failures[model] = []
        if run.results[model] and not options.quiet:
            console.print(f"{model}: {len(run.results[model])} clip(s) already in {options.json} (--resume)")
    return run


def run(options: EvalOptions, models: dict[str, Path], console) -> int:
    clip_run = prepare(options, models, console)
    if clip_run is None:
        return 2
    with LossClient(list(options.url), api_key=options.api_key, timeout=options.timeout) as client:
        for model, name, sr, gt in clip_run.todo():
            try:
                answer = client.score_clip(sr, gt, clip_run.metrics, **clip_run.metric_options)
            except (LossServiceError, OSError, ValueError) as exc:
                clip_run.failures[model].append(dict(clip=name, status=getattr(exc, "status", None), message=str(exc)))
                console.print(f"[red]{model} / {name}: {exc}[/red]")
                continue
            clip_run.add(model, name, answer, sr)
            if not options.quiet:
                console.print(f"{model} / {name}: " + ", ".join(f"{k} {v:.4f}" for k, v in answer["per_clip"].items() if v is not None))
    return finish(clip_run, models, console)


def finish(run: ClipRun, models: dict[str, Path], console) -> int:
    """The JSON, the store and the frames CSV of a clip run, and its summary; the exit status."""
    options, results, preset, gt_clips = run.options, run.results, run.preset, run.gt_clips
    centred = bool(preset and preset["centre_frame"])
    report = dict(
        format="loss-service-eval-clips",
        version=1,
        dataset=options.dataset or options.preset,
        scale=options.scale,
        metrics=run.metrics,
        backend=options.backend,
        options=run.metric_options,
        preset=preset and dict(preset, clips=list(preset["clips"] or [])),
        conventions=run.conventions,
        gt_sources={name: source_record(centre_frame(clip) if centred else clip) for name, clip in gt_clips.items()},
        models={
            model: dict(
                sr_dir=str(models[model].resolve()),
                clips=results[model],
                dataset=dataset_means(results[model]),
                failures=run.failures[model],
                unpaired=run.unpaired[model],
            )
            for model in models
        },
    )
    output.write_json(options.json, report)
    if options.store and run.conventions is not None:
        values = (
            (model, name, metric, value)
            for model, clips in results.items()
            for name, clip in clips.items()
            for metric, value in clip["per_clip"].items()
        )
        try:
            output.store_values(options.store, options, run.conventions, values)
        except StoreError as exc:
            console.print(f"[red]{exc}[/red]")
            return 2
    output.write_frames_csv(Path(options.out), results)
    for model in models:
        output.print_clip_summary(model, len(results[model]), report["models"][model]["dataset"], run.unpaired[model], console)
    missing = any(run.unpaired[model]["gt"] for model in models)
    return 1 if missing or any(run.failures.values()) else 0
