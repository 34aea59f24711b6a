"""Exact SR/restoration losses and metrics as a PyTorch library (docs/metrics.md).

Start with ``list_metrics()``, ``create_metric(name, **options)``, ``score(sr, gt, ...)``,
``dataset_score(sr_images, gt_images, metrics=("fid", "kid"))`` and ``conventions(metrics, ...)``;
the loss classes below are the same formulas as training losses.

Names load on first use (PEP 562), so ``losses.sets.statistics``, which is NumPy only, imports
without torch: the torch-free client reduces FID/KID features with it.

The package by kind: the image formulas and the registry here; ``losses.nets`` (backbones,
weights, the model cache, feature views); ``losses.clips`` (reading clips, the clip metrics,
``score_clip``); ``losses.sets`` (FID and KID's statistics). (No module is named like
a public name, or importing it would bind the module over the name.)
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

# Public name → the module defining it.
_EXPORTS = {
    **dict.fromkeys(("DEFAULT_METRICS", "MetricModule", "conventions", "create_metric", "list_metrics", "score"), "api"),
    **dict.fromkeys(("SetExtractor", "dataset_features", "dataset_score"), "api"),
    **dict.fromkeys(
        (
            "BACKBONES",
            "Backbone",
            "BackboneSpec",
            "DINOv2Features",
            "SequentialFeatures",
            "build_backbone",
            "clear_shared_backbones",
            "get_backbone",
        ),
        "nets.backbones",
    ),
    "CLPLoss": "clp",
    "DistillationLoss": "distillation",
    "DISTSLoss": "dists",
    **dict.fromkeys(("DATASET_METRICS", "FeatureStats", "SetFeatures", "frechet_distance"), "sets.statistics"),
    **dict.fromkeys(("FeatureView", "ImageBatch"), "nets.features"),
    "HybridLoss": "hybrid",
    **dict.fromkeys(("FeatureKDLoss", "KDImageLoss"), "kd"),
    "LPIPS": "lpips_loss",
    **dict.fromkeys(("PERCEPTUAL_PRESETS", "PerceptualLoss", "VGGPerceptualLoss"), "perceptual"),
    **dict.fromkeys(("SSIMLoss", "lr_psnr", "ms_ssim", "psnr", "ssim"), "psnr_ssim"),
    **dict.fromkeys(("REGISTRY", "Metric", "MetricError", "compute"), "registry"),
    "imresize": "resize",
    "score_clip": "clips.scoring",
    "dataset_means": "clips.means",
    **dict.fromkeys(("Plan", "make_plan"), "plan"),
    "read_clip": "clips.video",
    **dict.fromkeys(("ChecksumError", "WeightsError", "WeightsNotFoundError"), "nets.weights"),
}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    """A public name from its module, or a submodule (``losses.registry``), imported on first use."""
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    elif importlib.util.find_spec(f"{__name__}.{name}") is not None:
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
