"""Exact SR/restoration losses and metrics as a PyTorch library (see SPEC.md §3)."""

from .backbones import Backbone, DINOv2Features, VGGFeatures, clear_shared_backbones, get_backbone
from .clp import CLPLoss
from .distillation import DistillationLoss
from .features import FeatureView
from .hybrid import HybridLoss
from .kd import FeatureKDLoss, KDImageLoss
from .lpips_vgg import LPIPS
from .perceptual import PERCEPTUAL_PRESETS, PerceptualLoss, VGGPerceptualLoss
from .psnr_ssim import SSIMLoss, psnr, ssim
from .registry import REGISTRY, Metric, MetricError, compute
from .weights import ChecksumError, WeightsError, WeightsNotFoundError

__all__ = [
    "Backbone", "DINOv2Features", "VGGFeatures", "clear_shared_backbones", "get_backbone",
    "CLPLoss", "DistillationLoss", "FeatureView", "HybridLoss", "FeatureKDLoss", "KDImageLoss", "LPIPS",
    "PERCEPTUAL_PRESETS", "PerceptualLoss", "VGGPerceptualLoss", "SSIMLoss", "psnr", "ssim",
    "REGISTRY", "Metric", "MetricError", "compute", "ChecksumError", "WeightsError", "WeightsNotFoundError",
]
