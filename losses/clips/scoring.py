"""``score_clip``: one clip through the frame metrics (in chunks, through the registry) and the
clip metrics (tof, tlp, vmaf), from one plan made before the first frame.

Frame metrics are averaged over every frame; clip metrics over their own values (tof and tlp per
pair of frames, after their ``skip``). Frames become float32 a chunk at a time, so a long uint8
clip never sits in memory as float32 all at once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from losses.clips.temporal import TECOGAN_SKIP, ClipFrames, ClipValues, as_unit
from losses.nets.backbones import get_backbone
from losses.nets.weights import weights_dir_scope
from losses.plan import Plan, make_plan
from losses.registry import compute, resolve_options

CLIP_KINDS = ("image", "clip")


def clip_plan(metrics: Sequence[str] | str, options: dict[str, Any], skip: int | None = None) -> Plan:
    """The plan of a clip request: frame (image) and clip metrics. ``skip`` goes to the metrics that
    take it (tof, tlp), and is ignored when none was asked for."""
    plan = make_plan(metrics, options, kinds=CLIP_KINDS)
    if skip is None or not any("skip" in metric.options for metric in plan.metrics):
        return plan
    options = {**options, "skip": skip}
    return Plan(plan.metrics, options, resolve_options(plan.metrics, options))


def score_clip(
    sr: torch.Tensor,
    gt: torch.Tensor,
    lr: torch.Tensor | None = None,
    metrics: Sequence[str] = ("psnr", "ssim", "tof", "tlp"),
    skip: int | None = TECOGAN_SKIP,
    chunk: int = 16,
    device=None,
    pretrained: bool = True,
    weights_dir=None,
    overlap_flow: bool = True,
    plan: Plan | None = None,
    sources: dict | None = None,
    **options: Any,
) -> dict:
    """Score one clip, (T, C, H, W) frames in [0, 1] or uint8 (``lr`` frames may be smaller).

    Returns ``per_frame`` ({metric: (T,) array} for the frame metrics and VMAF, on every frame),
    ``temporal`` ({metric: array} for tof/tlp, one value per pair (t−1, t) with skip < t < T − skip),
    ``frames`` ({metric: the frame index t of each value}), ``per_clip`` (each metric's mean) and
    ``details`` (how VMAF was computed: model, libvmaf version, YUV conversion).

    ``plan`` (from ``clip_plan``) replaces ``metrics``, ``skip`` and ``options``. ``sources``
    (``{"sr": path, "gt": path}``) names the video files the frames came from: VMAF then reads their
    decoded planes as FFmpeg does, and refuses two files of different pixel formats. With
    ``overlap_flow`` the clip metrics that release the GIL (tof's OpenCV flows) run on a worker
    thread while the backbones score the frames; the values are the same either way.
    """
    plan = plan or clip_plan(metrics, options, skip)
    if sr.shape != gt.shape or sr.ndim != 4:
        raise ValueError(f"sr and gt must be (T, C, H, W) clips of one shape, got {tuple(sr.shape)} and {tuple(gt.shape)}")
    where = torch.device(device) if device is not None else sr.device

    def backbone(name: str):
        return get_backbone(name, where, pretrained, weights_dir)

    frames = ClipFrames(sr, gt, chunk, backbone, sources)
    clip_metrics = plan.of_kind("clip")
    with weights_dir_scope(weights_dir):
        started = {
            metric.name: _started(lambda m=metric: m.clip.run(frames, plan.resolved[m.name]), overlap_flow and metric.clip.background)
            for metric in clip_metrics
            if metric.clip.background
        }
        per_frame = _frame_values(plan, sr, gt, lr, chunk, where, backbone)
        results: dict[str, ClipValues] = {}
        for metric in clip_metrics:
            results[metric.name] = (
                started[metric.name].result() if metric.name in started else metric.clip.run(frames, plan.resolved[metric.name])
            )
    per_frame.update({name: result.values for name, result in results.items() if not result.pairs})
    temporal = {name: result.values for name, result in results.items() if result.pairs}
    all_frames = list(range(sr.shape[0]))
    return dict(
        per_frame=per_frame,
        temporal=temporal,
        frames={**{name: all_frames for name in per_frame}, **{name: result.frames for name, result in results.items()}},
        per_clip={name: float(np.mean(values)) if len(values) else float("nan") for name, values in {**per_frame, **temporal}.items()},
        details={name: result.details for name, result in results.items() if result.details is not None},
    )


def _frame_values(plan: Plan, sr, gt, lr, chunk: int, where: torch.device, backbone: Callable) -> dict[str, np.ndarray]:
    """The image metrics of every frame, ``chunk`` frames per registry call, with the plan's entries."""
    image_metrics = plan.of_kind("image")
    per_frame: dict[str, list[float]] = {}
    for start in range(0, sr.shape[0], chunk) if image_metrics else ():
        part = slice(start, min(start + chunk, sr.shape[0]))
        images = dict(sr=as_unit(sr[part]), gt=as_unit(gt[part]), lr=None if lr is None else as_unit(lr[part]))
        with torch.inference_mode():
            values = compute(image_metrics, {r: i.to(where) for r, i in images.items() if i is not None}, plan.resolved, backbone)
        for name, value in values.items():
            per_frame.setdefault(name, []).extend(value.double().cpu().tolist())
    return {name: np.array(values) for name, values in per_frame.items()}


def _started(compute_values: Callable[[], ClipValues], in_background: bool) -> Future:
    """``compute_values()`` as a future: on a thread of its own, started now, or computed at once."""
    if not in_background:
        done: Future = Future()
        done.set_result(compute_values())
        return done
    pool = ThreadPoolExecutor(1, thread_name_prefix="clip-metric")
    future = pool.submit(compute_values)
    pool.shutdown(wait=False)
    return future
