"""The metric registry: each metric is one declarative entry pointing at its formula.

A metric function takes an ``ImageBatch`` (the batch's images and its feature cache) and the
metric's resolved options, and returns per-image values of shape (B,), or a mapping with
``total`` and named components. The formulas live in their loss modules; this file only
lists metrics. Adding a metric means one ``register`` call (docs/architecture.md).

One catalogue holds every kind: ``image`` metrics score each image (``score``), ``clip`` metrics
a whole clip (``score_clip``; declared in losses/clips/temporal.py), ``set`` metrics two image sets
(``dataset_score``; declared in losses/sets/statistics.py).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from losses.clipiqa import CLIPIQA_TERMS, POSITIONAL, clipiqa
from losses.clipiqa import DEFAULTS as CLIPIQA_DEFAULTS
from losses.clips.temporal import CLIP_SPECS, ClipSpec
from losses.clp import CLP_TERMS, clp_per_sample
from losses.dists import DISTS_ALPHA_BETA, DISTS_TERM, dists_per_sample
from losses.hybrid import HYBRID_PRESETS, PERCEPTUAL_TERM, hybrid_terms
from losses.kd import KD_DEFAULTS, KD_VGG_TERM, kd_terms
from losses.lpips_loss import LPIPS_HEADS, LPIPS_TERMS, lpips_per_sample
from losses.maniqa import CHECKPOINTS as MANIQA_CHECKPOINTS
from losses.maniqa import DEFAULT_CROPS as MANIQA_DEFAULT_CROPS
from losses.maniqa import MANIQA_TERMS, crops_fit, maniqa_scorer
from losses.musiq import CHECKPOINTS as MUSIQ_CHECKPOINTS
from losses.musiq import LABELS as MUSIQ_LABELS
from losses.musiq import MUSIQ_TERMS, musiq_scorer
from losses.nets.backbones import Backbone, backbone_spec, get_backbone
from losses.nets.clip import PROMPT_PAIRS
from losses.nets.features import FeatureView, ImageBatch, LayerTerm
from losses.nets.inception import FID_INCEPTION  # noqa: F401 - the backbone the dataset metrics read
from losses.nets.maniqa import CROP_PROTOCOLS
from losses.nets.tables import add_named
from losses.nets.weights import WeightSpec
from losses.niqe import CONVENTIONS as NIQE_CONVENTIONS
from losses.niqe import NIQE_PRISTINE, check_blocks, flat_warning, niqe
from losses.perceptual import distance_term, feature_distance, preset_view
from losses.psnr_ssim import MS_SSIM_MIN_SIDE, SSIM_WINDOW, check_crop, check_image, lr_psnr, lr_scale, ms_ssim, psnr, ssim
from losses.sets.statistics import DATASET_METRICS, FEATURE_CONVENTIONS, DatasetMetric

MetricFn = Callable[[ImageBatch, dict], "torch.Tensor | dict[str, torch.Tensor]"]
# Checks image sizes (role → (H, W)) against resolved options before any work; raises MetricError.
SizeCheck = Callable[[Mapping[str, tuple[int, int]], dict], None]
PAIR = ("sr", "gt")
KINDS = ("image", "clip", "set")


class MetricError(ValueError):
    """A request the metrics cannot serve; ``field`` names the offending input."""

    def __init__(self, field_name: str, message: str):
        super().__init__(message)
        self.field = field_name


@dataclass(frozen=True)
class Metric:
    """One catalogue entry: what the metric needs, which way is better, its options and formula."""

    name: str
    fn: MetricFn
    needs: tuple[str, ...]
    lower_is_better: bool
    # What the metric reads from backbones; the batch plans all metrics' terms into shared passes.
    terms: tuple[LayerTerm, ...] = ()
    options: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""
    convention: str = ""
    check_sizes: SizeCheck | None = None
    # Whether the backbone is used for the given options (e.g. HybridLoss skips it at weight 0).
    uses_backbone: Callable[[dict], bool] = lambda options: True
    # Weight files read besides the backbones' (LPIPS heads, DISTS α/β): verified and recorded like theirs.
    weights: tuple[WeightSpec, ...] = ()
    # A metric of two image sets (FID, KID): ``fn`` gives each image's feature vector (B, D), and
    # the entry reduces two sets' features to the value (losses/sets/statistics.py).
    dataset: DatasetMetric | None = None
    # A metric of a whole clip (tof, tlp, vmaf): ``clip.run`` scores it (losses/clips/temporal.py).
    clip: ClipSpec | None = None
    # The values a text option may take (e.g. NIQE's convention: ``matlab`` or ``basicsr``).
    choices: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # A warning for one image's values ({name and name.component: float}), or None (NIQE's flat blocks).
    warn: Callable[[Mapping[str, float]], str | None] | None = None

    @property
    def kind(self) -> str:
        return "set" if self.dataset is not None else "clip" if self.clip is not None else "image"

    def missing(self) -> str | None:
        """Why this metric cannot run in this process (no FFmpeg with libvmaf), or None."""
        reason = self.clip.missing() if self.clip is not None else None
        return f"metric {self.name!r} {reason}" if reason else None

    @property
    def views(self) -> tuple[FeatureView, ...]:
        return tuple(term.view for term in self.terms)

    @property
    def backbone(self) -> str | None:
        return self.views[0].backbone if self.views else None

    def backbones(self, options: dict) -> set[str]:
        return {view.backbone for view in self.views} if self.uses_backbone(options) else set()

    def terms_for(self, options: dict) -> tuple[LayerTerm, ...]:
        """The layer terms these options read: a set metric's depend on its convention."""
        if self.dataset is not None:
            return (DATASET_TERMS[self.dataset.extractor(options)],)
        return self.terms

    def catalogue_entry(self) -> dict:
        reason = self.missing()
        return dict(
            name=self.name,
            kind=self.kind,
            lower_is_better=self.lower_is_better,
            needs=list(self.needs),
            options=dict(self.options),
            choices={key: list(values) for key, values in self.choices.items()},
            backbone=self.backbone,
            description=self.description,
            convention=self.convention,
            dataset=self.kind == "set",
            clip=self.kind == "clip",
            available=reason is None,
            unavailable_reason=reason,
        )


REGISTRY: dict[str, Metric] = {}


def register(metric: Metric) -> Metric:
    return add_named(REGISTRY, metric, "metric")


def _perceptual(term: LayerTerm) -> MetricFn:
    return lambda batch, options: feature_distance(batch, term)


def _clp(term: LayerTerm) -> MetricFn:
    return lambda batch, options: options["loss_weight"] * clp_per_sample(batch, term)


def _crop_fits(min_side: int, label: str, role: str = "sr") -> SizeCheck:
    """``crop_border`` must leave ``min_side`` pixels of the ``role`` image on each side."""

    def check(sizes: Mapping[str, tuple[int, int]], options: dict) -> None:
        try:
            check_crop(sizes[role], options["crop_border"], min_side, label)
        except ValueError as exc:
            raise MetricError("options" if options["crop_border"] else role, str(exc)) from None

    return check


def _lr_consistent(sizes: Mapping[str, tuple[int, int]], options: dict) -> None:
    try:
        lr_scale(sizes["sr"], sizes["lr"])
    except ValueError as exc:
        raise MetricError("lr", str(exc)) from None
    _crop_fits(1, "lr_psnr", "lr")(sizes, options)


SR_CONVENTION = dict(crop_border=0, y_channel=False)
VGG_RELU2_2_TERM = distance_term(preset_view("vgg_relu2_2"))

# --- the metrics ------------------------------------------------------------------------------

register(
    Metric(
        "psnr",
        lambda b, o: psnr(b["sr"], b["gt"], **o),
        PAIR,
        False,
        options=SR_CONVENTION,
        description="PSNR in dB on the [0, 255] scale",
        check_sizes=_crop_fits(1, "PSNR"),
        convention="BasicSR calculate_psnr / MATLAB: float64, Y = BT.601 studio swing (pyiqa defaults to YIQ)",
    )
)
register(
    Metric(
        "ssim",
        lambda b, o: ssim(b["sr"], b["gt"], **o),
        PAIR,
        False,
        options=SR_CONVENTION,
        description="SSIM, 11×11 Gaussian window σ=1.5, valid filtering",
        check_sizes=_crop_fits(SSIM_WINDOW, "SSIM"),
        convention="BasicSR calculate_ssim / MATLAB ssim_index = scikit-image gaussian_weights, no sample covariance",
    )
)
register(
    Metric(
        "ms_ssim",
        lambda b, o: ms_ssim(b["sr"], b["gt"], **o),
        PAIR,
        False,
        options=SR_CONVENTION,
        description="MS-SSIM, 5 scales, weights .0448/.2856/.3001/.2363/.1333",
        check_sizes=_crop_fits(MS_SSIM_MIN_SIDE, "MS-SSIM"),
        convention="original MATLAB msssim.m: 2×2 mean + symmetric edge between scales (pytorch-msssim zero-pads odd sizes)",
    )
)
register(
    Metric(
        "lr_psnr",
        lambda b, o: lr_psnr(b["sr"], b["lr"], **o),
        ("sr", "lr"),
        False,
        options=dict(SR_CONVENTION, uint8_rounding=False),
        description="PSNR(lr, MATLAB-bicubic-downscaled sr): LR consistency, target ≥ 45 dB",
        check_sizes=_lr_consistent,
        convention="NTIRE 2022 Learning the SR Space: MATLAB imresize(sr, 1/s, 'bicubic'), antialiased; crop in LR pixels",
    )
)
register(
    Metric("l1", lambda b, o: (b["sr"] - b["gt"]).abs().flatten(1).mean(dim=1), PAIR, True, description="mean absolute error on [0, 1]")
)
register(
    Metric(
        "perceptual",
        _perceptual(PERCEPTUAL_TERM),
        PAIR,
        True,
        terms=(PERCEPTUAL_TERM,),
        description="VGG16 relu1_2/2_2/3_3/4_3, ¼ each, L1",
    )
)
register(
    Metric(
        "vgg_relu2_2",
        _perceptual(VGG_RELU2_2_TERM),
        PAIR,
        True,
        terms=(VGG_RELU2_2_TERM,),
        description="VGG16 relu2_2, L1, resized to 224×224",
    )
)
register(
    Metric(
        "hybrid",
        hybrid_terms,
        PAIR,
        True,
        terms=(PERCEPTUAL_TERM,),
        options=HYBRID_PRESETS["default"],
        uses_backbone=lambda o: o["perceptual_weight"] > 0,
        description="l1/ms/grad/perceptual weighted sum; components as hybrid.<term>",
    )
)
register(
    Metric(
        "kd",
        kd_terms,
        ("sr", "gt", "teacher"),
        True,
        terms=(KD_VGG_TERM,),
        options=KD_DEFAULTS,
        uses_backbone=lambda o: o["lambda_vgg"] > 0,
        description="L1(sr, gt) + λ_kd·L1(sr, teacher) + λ_vgg·VGG relu2_2(sr, teacher)",
    )
)
for _backbone, _term in CLP_TERMS.items():
    register(
        Metric(
            f"clp_{_backbone}",
            _clp(_term),
            ("sr", "gt", "lr"),
            True,
            terms=(_term,),
            options=dict(loss_weight=1.0),
            description=f"contrastive triplet perceptual loss on {_backbone} features",
        )
    )


def _niqe_blocks(sizes: Mapping[str, tuple[int, int]], options: dict) -> None:
    try:
        check_blocks(sizes["sr"], options["crop_border"])
    except ValueError as exc:
        raise MetricError("options" if options["crop_border"] else "sr", str(exc)) from None


register(
    Metric(
        "niqe",
        lambda b, o: niqe(b["sr"], **o),
        ("sr",),
        True,
        options=dict(crop_border=0, gray=False, convention="matlab"),
        choices=dict(convention=NIQE_CONVENTIONS),
        description="NIQE: no-reference naturalness, 96×96 blocks at two scales against the pristine model; "
        "components niqe.flat_blocks and niqe.flat_spread (blocks of rounding noise, and how far they can move the value)",
        check_sizes=_niqe_blocks,
        weights=(NIQE_PRISTINE,),
        warn=flat_warning,
        convention="matlab (default): LIVE niqe_release as MATLAB runs it, float64, imfilter's two 1-D passes, MATLAB's Y "
        "(rgb2ycbcr) or rgb2gray with gray=true, MATLAB imresize; basicsr: BasicSR calculate_niqe's float32 arithmetic, "
        "bgr2ycbcr Y rounded half to even (gray: OpenCV), SciPy 2-D convolve, BasicSR's float32 imresize; "
        "both read BasicSR's niqe_pris_params.npz",
    )
)
register(
    Metric(
        "clipiqa",
        clipiqa,
        ("sr",),
        False,
        terms=(CLIPIQA_TERMS[tuple(CLIPIQA_DEFAULTS.values())],),
        options=CLIPIQA_DEFAULTS,
        choices=dict(prompts=tuple(PROMPT_PAIRS), positional_embedding=tuple(POSITIONAL)),
        description="CLIP-IQA: no-reference quality in [0, 1], the softmax probability of 'Good photo.' over "
        "'Bad photo.' from CLIP ResNet-50 (prompts picks another antonym pair)",
        convention="CLIP-IQA authors' CLIPIQAFixed: RN50 (OpenAI RN50.pt), CLIP mean/std, the full image (no resize), "
        "attention pool without the positional embedding (positional_embedding=interpolate: the authors' bicubic resize), "
        "logit scale exp(logit_scale)",
    )
)


def _maniqa_crops_fit(sizes: Mapping[str, tuple[int, int]], options: dict) -> None:
    problem = crops_fit(sizes, options)
    if problem:
        raise MetricError("sr", problem)


for _metric, _label in (("maniqa", "KonIQ-10k"), ("maniqa_kadid", "KADID-10k")):
    register(
        Metric(
            _metric,
            maniqa_scorer(_metric),
            ("sr",),
            False,
            terms=(MANIQA_TERMS[(_metric, MANIQA_DEFAULT_CROPS[_metric])],),
            options=dict(crops=MANIQA_DEFAULT_CROPS[_metric]),
            choices=dict(crops=CROP_PROTOCOLS),
            check_sizes=_maniqa_crops_fit,
            description=f"MANIQA trained on {_label}: no-reference quality, higher is better, about [0, 1] "
            "(the checkpoint's min–max normalised MOS); crops picks the 224² views averaged",
            convention=f"MANIQA authors' code and {MANIQA_CHECKPOINTS[_metric]} checkpoint (ckpt_*.pt state dict, scale 0.8), "
            "input (x − 0.5) / 0.5; crops=resize: OpenCV bicubic to 224² rounded to 8 bits (their KonIQ loader), "
            "five_point: corners and centre (their evaluation), random20: their predict_one_image.py's seeded crops",
        )
    )


for _metric, _dataset in MUSIQ_CHECKPOINTS.items():
    register(
        Metric(
            _metric,
            musiq_scorer(_metric),
            ("sr",),
            False,
            terms=(MUSIQ_TERMS[_metric],),
            description=f"MUSIQ trained on {MUSIQ_LABELS[_dataset]}: no-reference quality, higher is better, "
            + ("the expected AVA rating in [1, 10]" if _dataset == "ava" else "on the checkpoint's MOS scale (about 0–100)"),
            convention=f"MUSIQ authors' JAX code and {_dataset}_ckpt.npz: the whole image at its own size and resized "
            "(TensorFlow Gaussian, aspect kept) to longer sides 224 and 384, 32² patches with SAME padding, hashed 10×10 positions",
        )
    )

register(
    Metric(
        "lpips_vgg",
        lambda b, o: lpips_per_sample(b, LPIPS_TERMS["vgg"]),
        PAIR,
        True,
        terms=(LPIPS_TERMS["vgg"],),
        description="LPIPS v0.1, VGG variant",
        weights=(LPIPS_HEADS["vgg"],),
        convention="lpips package, lpips(sr, gt) on [0, 1] inputs mapped to [−1, 1] (normalize=True)",
    )
)
register(
    Metric(
        "lpips_alex",
        lambda b, o: lpips_per_sample(b, LPIPS_TERMS["alex"]),
        PAIR,
        True,
        terms=(LPIPS_TERMS["alex"],),
        weights=(LPIPS_HEADS["alex"],),
        description="LPIPS v0.1, AlexNet variant (the LPIPS most SR papers report)",
        convention="lpips package, LPIPS(net='alex', version='0.1'), lpips(sr, gt), [0, 1] mapped to [−1, 1]",
    )
)
register(
    Metric(
        "dists",
        lambda b, o: dists_per_sample(b, DISTS_TERM),
        PAIR,
        True,
        terms=(DISTS_TERM,),
        weights=(DISTS_ALPHA_BETA,),
        description="DISTS: 1 − Σ(α·S1 + β·S2)/Σ(α + β) on VGG16 with L2 pooling",
        convention="dists-pytorch package (Ding et al. 2020), α/β from its weights.pt; no resize of the input",
    )
)


def _feature_term(backbone: str, layer: str) -> LayerTerm:
    """Each image's ``layer`` features flattened to a vector: (B, D)."""
    return LayerTerm(FeatureView.of(backbone, [layer]), ("sr",), lambda name, weight, features: features[0].flatten(1))


DATASET_TERMS = {
    (backbone, layer): _feature_term(backbone, layer)
    for backbone in {spec.features[0] for spec in DATASET_METRICS.values()}
    for layer in FEATURE_CONVENTIONS.values()
}


def _set_features(dataset: DatasetMetric) -> MetricFn:
    def features(batch: ImageBatch, options: dict) -> torch.Tensor:
        term = DATASET_TERMS[dataset.extractor(options)]
        return batch.reduced(term)[term.view.layers[0]]

    return features


for _dataset in DATASET_METRICS.values():
    register(
        Metric(
            _dataset.name,
            _set_features(_dataset),
            ("sr",),
            _dataset.lower_is_better,
            terms=(DATASET_TERMS[_dataset.features],),
            options=_dataset.options,
            choices=dict(convention=tuple(FEATURE_CONVENTIONS)),
            description=_dataset.description,
            convention=_dataset.convention,
            dataset=_dataset,
        )
    )


def _whole_clip_only(name: str) -> MetricFn:
    def refuse(batch: ImageBatch, options: dict):
        raise MetricError("metrics", f"{name!r} scores a whole clip: use losses.score_clip or POST /v1/score/clip")

    return refuse


for _clip in CLIP_SPECS.values():
    register(
        Metric(
            _clip.name,
            _whole_clip_only(_clip.name),
            PAIR,
            _clip.lower_is_better,
            terms=_clip.terms,
            options=_clip.options,
            description=_clip.description,
            convention=_clip.convention,
            weights=_clip.weights,
            clip=_clip,
        )
    )

# --- validation and batched scoring --------------------------------------------------------------


DATASET_ADVICE = "score a set with `loss-service eval --metrics fid,kid`, POST /v1/features, or losses.dataset_score(sr_images, gt_images)"


KIND_ADVICE = {
    "set": f"dataset metric(s) comparing a set of sr images with a set of gt images, not one image; {DATASET_ADVICE}",
    "clip": "clip metric(s) of a whole clip, not one image: score a clip with losses.score_clip, POST /v1/score/clip or "
    "`loss-service eval` on clip folders",
    "image": "metric(s) that score single images, not sets",
}


# --- composites of other entries ----------------------------------------------------------------

# The NTIRE 2025 ×4 challenge's perceptual score (its report, arXiv:2504.14582; its metrics.py):
# (1 − LPIPS) + (1 − DISTS) + CLIP-IQA + MANIQA + MUSIQ / 100 + max(0, (10 − NIQE) / 10), each on
# the whole RGB image, with each component at its entry's defaults.
NTIRE2025_PARTS = ("lpips_alex", "dists", "clipiqa", "maniqa", "musiq", "niqe")


def _part(name: str, batch: ImageBatch) -> torch.Tensor:
    result = REGISTRY[name].fn(batch, dict(REGISTRY[name].options))
    return result["total"] if isinstance(result, dict) else result


def ntire2025_perceptual(batch: ImageBatch, options: dict) -> dict[str, torch.Tensor]:
    parts = {name: _part(name, batch) for name in NTIRE2025_PARTS}
    total = (1 - parts["lpips_alex"]) + (1 - parts["dists"]) + parts["clipiqa"] + parts["maniqa"] + parts["musiq"] / 100
    return {"total": total + ((10 - parts["niqe"]) / 10).clamp(min=0), **parts}


def _parts_fit(sizes: Mapping[str, tuple[int, int]], options: dict) -> None:
    for name in NTIRE2025_PARTS:
        part = REGISTRY[name]
        if part.check_sizes is not None:
            part.check_sizes(sizes, dict(part.options))


register(
    Metric(
        "ntire2025_perceptual",
        ntire2025_perceptual,
        PAIR,
        False,
        terms=tuple(term for name in NTIRE2025_PARTS for term in REGISTRY[name].terms),
        weights=tuple(spec for name in NTIRE2025_PARTS for spec in REGISTRY[name].weights),
        check_sizes=_parts_fit,
        description="the NTIRE 2025 ×4 perceptual-track score: (1 − lpips_alex) + (1 − dists) + clipiqa + maniqa + musiq/100 "
        "+ max(0, (10 − niqe)/10), with each part as a component (ntire2025_perceptual.<part>)",
        convention="NTIRE 2025 ×4 challenge (arXiv:2504.14582, its metrics.py): whole RGB images, no crop; parts at their "
        "entries' defaults. Differs from the challenge's pyiqa numbers in two parts: maniqa is the KonIQ-10k checkpoint "
        "(the challenge's pyiqa default reads PIPAL22's), niqe is the matlab convention (not pyiqa's port)",
    )
)


def get_metrics(names: Sequence[str], kinds: Sequence[str] = ("image",)) -> list[Metric]:
    """The entries of ``names``, each of one of ``kinds`` (image, clip, set); a clear error otherwise."""
    unknown = [name for name in names if name not in REGISTRY]
    if unknown:
        raise MetricError("metrics", f"unknown metric(s) {unknown}{_suggestions(unknown)}; valid: {sorted(REGISTRY)}")
    if not names:
        raise MetricError("metrics", f"no metric requested; valid: {sorted(REGISTRY)}")
    for kind in KINDS:
        wrong = [name for name in names if REGISTRY[name].kind == kind and kind not in kinds]
        if wrong:
            allowed = sorted(name for name, metric in REGISTRY.items() if metric.kind in kinds)
            raise MetricError("metrics", f"{wrong}: {KIND_ADVICE[kind]}; here the metrics are {allowed}")
    return [REGISTRY[name] for name in dict.fromkeys(names)]


def _guesses(name: str) -> list[str]:
    """The metrics a name as papers write it means: PSNR, MS-SSIM, LPIPS (either variant), "ssim"."""
    key = name.strip("\"'[] ").lower().replace("-", "_")
    if key in REGISTRY:
        return [key]
    variants = [known for known in REGISTRY if known.startswith(key + "_")]  # lpips → lpips_alex, lpips_vgg
    return variants or difflib.get_close_matches(key, REGISTRY, n=1, cutoff=0.75)


def _suggestions(unknown: Sequence[str]) -> str:
    words = [word for name in unknown for word in name.split()]
    if len(words) > len(unknown) and all(_guesses(word) for word in words):
        return f"; separate names with commas, e.g. {','.join(_guesses(word)[0] for word in words)}"
    guesses = [guess for name in unknown for guess in _guesses(name)]
    return f"; did you mean {', '.join(repr(g) for g in dict.fromkeys(guesses))}?" if guesses else ""


def _coerce(name: str, value: Any, default: Any, choices: tuple[str, ...] = ()) -> Any:
    if isinstance(default, str):
        if value in choices:
            return value
        raise MetricError("options", f"option {name!r} must be one of {list(choices)}, got {value!r}")
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
    elif isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value == value and abs(value) != float("inf"):
            return float(value)
    expected = "a non-negative integer" if type(default) is int else type(default).__name__
    raise MetricError("options", f"option {name!r} must be {expected}, got {value!r}")


def resolve_options(metrics: Sequence[Metric], options: Mapping[str, Any]) -> dict[str, dict]:
    """Per-metric options: each metric's defaults overridden by the (shared) request options."""
    known = {key for metric in metrics for key in metric.options}
    unknown = sorted(set(options) - known)
    if unknown:
        raise MetricError("options", f"unknown option(s) {unknown} for metrics {[m.name for m in metrics]}; valid: {sorted(known)}")
    return {
        metric.name: {
            key: _coerce(key, options.get(key, default), default, metric.choices.get(key, ())) for key, default in metric.options.items()
        }
        for metric in metrics
    }


def check_images(metrics: Sequence[Metric], sizes: Mapping[str, tuple[int, int]], options: Mapping[str, dict]) -> None:
    """Every needed image is present, and each metric accepts the sizes (role → (H, W))."""
    for metric in metrics:
        missing = [role for role in metric.needs if role not in sizes]
        if missing:
            raise MetricError(missing[0], f"metric {metric.name!r} needs image(s) {missing}")
        if metric.check_sizes is not None:
            metric.check_sizes(sizes, options[metric.name])
        for view in metric.views if metric.backbones(options[metric.name]) else ():
            _check_backbone_size(metric.name, view, sizes["sr"])


def size_problem(metric: Metric, side: int) -> str | None:
    """Why ``metric`` (default options) cannot score side×side images with a 4× smaller LR, or None."""
    sizes = {role: (side // 4, side // 4) if role == "lr" else (side, side) for role in ("sr", "gt", "lr", "teacher")}
    try:
        check_images([metric], sizes, resolve_options([metric], {}))
    except MetricError as exc:
        return str(exc)
    return None


def _check_backbone_size(metric: str, view: FeatureView, size: tuple[int, int]) -> None:
    """An image the backbone would shrink to nothing is a clear error, not a framework crash."""
    min_side = backbone_spec(view.backbone).min_side
    if view.resize is None and min(size) < min_side:
        raise MetricError(
            "sr", f"metric {metric!r} runs {view.backbone}, which needs images of at least {min_side}×{min_side}; got {size[1]}×{size[0]}"
        )


def compute(
    metrics: Sequence[Metric],
    images: Mapping[str, torch.Tensor],
    options: Mapping[str, dict],
    backbone: Callable[[str], Backbone] | None = None,
) -> dict[str, torch.Tensor]:
    """Score a batch: ``{name: (B,)}`` plus ``{name.component: (B,)}`` for composite metrics."""
    for role, image in images.items():
        try:
            check_image(image, role)
        except (TypeError, ValueError) as exc:
            raise MetricError(role, str(exc)) from None
    check_images(metrics, {role: tuple(image.shape[-2:]) for role, image in images.items()}, options)
    if backbone is None:
        device = images["sr"].device
        backbone = lambda name: get_backbone(name, device)  # noqa: E731
    batch = ImageBatch(
        images,
        backbone,
        (term for metric in metrics if metric.backbones(options[metric.name]) for term in metric.terms_for(options[metric.name])),
    )
    scores: dict[str, torch.Tensor] = {}
    for metric in metrics:
        result = metric.fn(batch, options[metric.name])
        if isinstance(result, dict):
            scores[metric.name] = result["total"]
            scores.update({f"{metric.name}.{k}": v for k, v in result.items() if k != "total"})
        else:
            scores[metric.name] = result
    return scores
