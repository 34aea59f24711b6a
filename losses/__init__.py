"""Exact SR/restoration losses and metrics as a PyTorch library (docs/metrics.md).

Start with ``list_metrics()``, ``create_metric(name, **options)``, ``score(sr, gt, ...)`` and
``conventions(metrics, ...)``;
the loss classes below are the same formulas as training losses.
"""

from .api import DEFAULT_METRICS, MetricModule, conventions, create_metric, list_metrics, score
from .backbones import (
    BACKBONES,
    Backbone,
    BackboneSpec,
    DINOv2Features,
    SequentialFeatures,
    build_backbone,
    clear_shared_backbones,
    get_backbone,
)
from .clp import CLPLoss
from .distillation import DistillationLoss
from .dists import DISTSLoss
from .features import FeatureView, ImageBatch
from .hybrid import HybridLoss
from .kd import FeatureKDLoss, KDImageLoss
from .lpips_loss import LPIPS
from .perceptual import PERCEPTUAL_PRESETS, PerceptualLoss, VGGPerceptualLoss
from .psnr_ssim import SSIMLoss, lr_psnr, ms_ssim, psnr, ssim
from .registry import REGISTRY, Metric, MetricError, compute
from .resize import imresize
from .temporal import dataset_means, score_clip
from .video import read_clip
from .weights import ChecksumError, WeightsError, WeightsNotFoundError

__all__ = [
    "DEFAULT_METRICS",
    "MetricModule",
    "conventions",
    "create_metric",
    "list_metrics",
    "score",
    "BACKBONES",
    "Backbone",
    "BackboneSpec",
    "DINOv2Features",
    "SequentialFeatures",
    "build_backbone",
    "clear_shared_backbones",
    "get_backbone",
    "CLPLoss",
    "DistillationLoss",
    "DISTSLoss",
    "FeatureView",
    "ImageBatch",
    "HybridLoss",
    "FeatureKDLoss",
    "KDImageLoss",
    "LPIPS",
    "PERCEPTUAL_PRESETS",
    "PerceptualLoss",
    "VGGPerceptualLoss",
    "SSIMLoss",
    "psnr",
    "ssim",
    "ms_ssim",
    "lr_psnr",
    "imresize",
    "score_clip",
    "read_clip",
    "dataset_means",
    "REGISTRY",
    "Metric",
    "MetricError",
    "compute",
    "ChecksumError",
    "WeightsError",
    "WeightsNotFoundError",
]
