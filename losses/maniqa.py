"""MANIQA (Yang et al., CVPR Workshops 2022): no reference image, higher is better.

The score of an image is the mean of MANIQA's scores of 224² views of it; which views is the
``crops`` option, recorded in the conventions because the authors' own scripts differ:

- ``resize``: the whole image resized to 224² with OpenCV's bicubic and rounded to 8 bits, as the
  authors' KonIQ-10k loader prepares every image (the KonIQ-10k checkpoint's default);
- ``five_point``: the four corner crops and the centre crop, as the authors' evaluation averages
  them (the KADID-10k checkpoint's default); needs both sides ≥ 224;
- ``random20``: the 20 crops of the authors' one-image script (``predict_one_image.py``), at the
  positions its seed of 20 draws: deterministic, and the number that script prints.

The checkpoints' labels were min–max normalised over their training sets, so the scores are
roughly in [0, 1] (the output is a ReLU, so never negative).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from losses.nets.features import FeatureView, ImageBatch, LayerTerm
from losses.nets.maniqa import CROP, CROP_PROTOCOLS

CHECKPOINTS = {"maniqa": "maniqa_koniq10k", "maniqa_kadid": "maniqa_kadid10k"}
DEFAULT_CROPS = {"maniqa": "resize", "maniqa_kadid": "five_point"}


def _scores(name: str, weight: float, features: list[torch.Tensor]) -> torch.Tensor:
    return features[0]


MANIQA_TERMS = {
    (metric, crops): LayerTerm(FeatureView.of(backbone, [crops]), ("sr",), _scores)
    for metric, backbone in CHECKPOINTS.items()
    for crops in CROP_PROTOCOLS
}


def maniqa_scorer(metric: str):
    """The registry function of one MANIQA entry: per-image scores (B,) of ``batch["sr"]``."""

    def score(batch: ImageBatch, options: dict) -> torch.Tensor:
        term = MANIQA_TERMS[(metric, options["crops"])]
        return batch.reduced(term)[options["crops"]]

    return score


def crops_fit(sizes: Mapping[str, tuple[int, int]], options: dict) -> str | None:
    """Why the crop protocol cannot take an image of these sizes, or None."""
    height, width = sizes["sr"]
    if options["crops"] != "resize" and min(height, width) < CROP:
        return f"crops={options['crops']!r} takes {CROP}×{CROP} crops; got {width}×{height} (crops='resize' takes any size)"
    return None
