"""``eval``'s options: one frozen object, and the argument parser that builds it.

Light on purpose (argparse, dataclasses and the preset names): ``loss-service --help`` builds
this parser without loading the client's HTTP side or the server.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field, fields
from pathlib import Path

from ...common.arguments import add_ray_arguments, add_scoring_server_arguments, json_object_argument, number
from ...common.errors import comma_list
from ...common.protocol import DEFAULT_METRICS
from .presets import IMAGE_PRESETS, PRESETS, with_image_preset

DEFAULT_METRICS_ARG = ",".join(DEFAULT_METRICS)
REFERENCE_ROLES = ("gt", "lr", "teacher")


@dataclass(frozen=True)
class EvalOptions:
    """Everything one ``eval`` run was asked for. ``backend`` says who scores: ``server`` (``url``
    given) or ``in-process`` (the embedded server, whose loopback URL is filled in for the run)."""

    sr: tuple[str, ...]
    gt: str | None = None
    lr: str | None = None
    teacher: str | None = None
    url: tuple[str, ...] = ()
    backend: str = "server"
    device: str = "auto"
    weights_dir: str | None = None
    random_weights: bool = False
    dataset: str | None = None
    scale: int | None = None
    sr_suffix: str = ""
    lr_suffix: str = ""
    teacher_suffix: str = ""
    metrics: str = DEFAULT_METRICS_ARG
    feature_cache: str | None = None
    crop_border: int | None = None
    y_channel: bool = False
    options: dict = field(default_factory=dict)
    preset: str | None = None
    concurrency: int = 8
    out: str = "results.csv"
    json: str | None = None
    resume: bool = False
    store: str | None = None
    checkpoint: str | None = None
    api_key: str | None = None
    timeout: float = 120.0
    quiet: bool = False
    ray: str | None = None
    ray_actors: int = 2
    ray_batch_size: int = 8
    parquet: str | None = None

    @classmethod
    def from_arguments(cls, args: argparse.Namespace) -> EvalOptions:
        given = {f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)}
        options = cls(**{**given, "sr": tuple(args.sr), "url": tuple(args.url or ()), "options": dict(args.options or {})})
        return with_image_preset(options) if options.preset in IMAGE_PRESETS else options

    @property
    def metric_names(self) -> list[str]:
        return comma_list(self.metrics)

    @property
    def metric_options(self) -> dict:
        """The metric options ``--crop-border``, ``--y-channel`` and ``--options`` give."""
        options = {}
        if self.crop_border is not None:
            options["crop_border"] = self.crop_border
        if self.y_channel:
            options["y_channel"] = True
        return {**options, **self.options}

    @property
    def references(self) -> dict[str, Path]:
        """The reference folders given, by role."""
        return {role: Path(getattr(self, role)) for role in REFERENCE_ROLES if getattr(self, role)}

    @property
    def suffixes(self) -> dict[str, str]:
        return {"sr": self.sr_suffix, "lr": self.lr_suffix, "teacher": self.teacher_suffix}


def add_eval_arguments(ev: argparse.ArgumentParser) -> None:
    """``eval``'s flags; ``EvalOptions.from_arguments`` reads what they parse to."""
    add_scoring_server_arguments(ev, "eval")
    ev.add_argument(
        "--sr",
        action="append",
        required=True,
        metavar="[NAME=]DIR",
        help="folder of a model's SR outputs; repeat as --sr NAME=DIR to compare models (one pass, each GT sent once)",
    )
    ev.add_argument("--gt", help="folder of ground truths (every metric but niqe needs it; for fid/kid the reference set)")
    ev.add_argument("--lr", help="folder of LR inputs (for lr_psnr, clp_*)")
    ev.add_argument("--teacher", help="folder of teacher outputs (for kd)")
    ev.add_argument("--dataset", default=None, help="dataset name recorded in the JSON (e.g. Set5), used by `report`")
    ev.add_argument("--scale", type=number(int, 1), default=None, help="SR scale recorded in the JSON (e.g. 4), used by `report`")
    ev.add_argument("--sr-suffix", default="", help="suffix stripped from SR stems, e.g. _x4 or _SR")
    ev.add_argument("--lr-suffix", default="", help="suffix stripped from LR stems, e.g. x4")
    ev.add_argument("--teacher-suffix", default="", help="suffix stripped from teacher stems")
    ev.add_argument(
        "--metrics",
        default=DEFAULT_METRICS_ARG,
        help=f"comma list (default {DEFAULT_METRICS_ARG}); fid and kid compare the whole --sr set with the whole --gt set",
    )
    ev.add_argument(
        "--feature-cache",
        default=None,
        metavar="DIR",
        help="where fid/kid keep GT-set features by content hash (default ~/.cache/loss-service/features); 'none' disables it",
    )
    ev.add_argument(
        "--crop-border",
        type=number(int, 0),
        default=None,
        help="pixels cropped from each edge for psnr, ssim, ms_ssim (LR pixels for lr_psnr)",
    )
    ev.add_argument("--y-channel", action="store_true", help="psnr, ssim, ms_ssim, lr_psnr on the BT.601 luma channel")
    ev.add_argument(
        "--options",
        type=json_object_argument,
        default=None,
        help='further metric options as a JSON object, e.g. {"uint8_rounding": true} for lr_psnr, {"subset_size": 100} for kid',
    )
    ev.add_argument(
        "--preset",
        choices=(*PRESETS, *IMAGE_PRESETS),
        default=None,
        help="clips: a test set's published conventions (REDS4: RGB, crop 0, clips 000/011/015/020; Vid4, UDM10: Y, crop 0; "
        "Vimeo90K-T: Y, crop 0, the centre frame of each of the 7824 listed 7-frame clips in the nested layout "
        "00001/0266/im1.png, or the fast/medium/slow subsets; TecoGAN: its metrics.py's psnr and lpips_alex columns "
        "(tecogan_psnr, tecogan_lpips) beside tof and tlp); images: NTIRE2025-perceptual (the challenge's perceptual score and its "
        "parts, whole RGB images; replaces --metrics); recorded in the JSON",
    )
    ev.add_argument("--concurrency", type=number(int, 1), default=8, help="requests in flight (default 8)")
    ev.add_argument("--out", default="results.csv", help="CSV path (default results.csv)")
    ev.add_argument(
        "--json",
        default=None,
        help="JSON results path: per model, per-image scores and image paths, plus the conventions record (the input of `report`)",
    )
    ev.add_argument("--resume", action="store_true", help="skip images (clips) already in --json (or --out), or with --store in the store")
    ev.add_argument(
        "--store", default=None, metavar="DB", help="also append every value to this SQLite results store (report --store reads it)"
    )
    ev.add_argument("--checkpoint", default=None, help="checkpoint name recorded with each value in --store")
    ev.add_argument("--api-key", default=None, help="bearer token")
    ev.add_argument("--timeout", type=number(float, 0, above=True), default=120.0, help="seconds per request")
    ev.add_argument("--quiet", action="store_true", help="no progress bar")
    distributed = add_ray_arguments(ev, "image folders (per-image metrics, fid and kid)")
    distributed.add_argument(
        "--parquet", default=None, metavar="DIR", help="per-image rows as Parquet files (default: --out with the suffix .parquet)"
    )
