"""MUSIQ (Ke et al., ICCV 2021): no reference image, higher is better.

One entry per released checkpoint (``losses.nets.musiq``): ``musiq`` (KonIQ-10k, the MUSIQ
papers report), ``musiq_spaq``, ``musiq_paq2piq`` (MOS scales of about 0–100) and ``musiq_ava``
(aesthetics: the expected rating, 1–10). The image is scored whole, at its own size and at two
resized scales; there are no options.
"""

from __future__ import annotations

import torch

from losses.nets.features import FeatureView, ImageBatch, LayerTerm

CHECKPOINTS = {"musiq": "koniq", "musiq_spaq": "spaq", "musiq_paq2piq": "paq2piq", "musiq_ava": "ava"}
LABELS = {"koniq": "KonIQ-10k", "spaq": "SPAQ", "paq2piq": "PaQ-2-PiQ", "ava": "AVA"}


def _scores(name: str, weight: float, features: list[torch.Tensor]) -> torch.Tensor:
    return features[0]


MUSIQ_TERMS = {
    metric: LayerTerm(FeatureView.of(f"musiq_{dataset}", ["score"]), ("sr",), _scores) for metric, dataset in CHECKPOINTS.items()
}


def musiq_scorer(metric: str):
    """The registry function of one MUSIQ entry: per-image scores (B,) of ``batch["sr"]``."""

    def score(batch: ImageBatch, options: dict) -> torch.Tensor:
        return batch.reduced(MUSIQ_TERMS[metric])["score"]

    return score
