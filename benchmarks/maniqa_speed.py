"""MANIQA on a 512² photo, side by side in one process (median of 5 each): the library's
``maniqa`` against the transcription of the authors' code in ``tests/maniqa_reference.py`` (the
whole ViT with forward hooks, one crop per forward, a Python loop for the weighted score), for
the ``resize`` and ``five_point`` protocols. Both at the authors' full size (ViT-B/8, 768
channels) with the same seeded random weights: speed does not depend on the weight values.

`PYTHONPATH=. uv run python benchmarks/maniqa_speed.py` prints one JSON line.
"""

import json

import numpy as np
import torch
from skimage import data

import losses
from benchmarks.timing import median_seconds
from losses.nets.backbones import BACKBONES, MANIQAScores
from losses.nets.maniqa import AUTHORS_SIZES
from service.bench.machine import cpu_model
from tests.maniqa_reference import ReferenceMANIQA, reference_score


def main() -> None:
    photo = np.ascontiguousarray(data.astronaut()[:512, :512])
    tensor = torch.from_numpy(photo).permute(2, 0, 1)[None].float() / 255.0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        reference = ReferenceMANIQA(AUTHORS_SIZES).eval()
    backbone = MANIQAScores(BACKBONES["maniqa_koniq10k"], reference.state_dict())
    metrics = losses.registry.get_metrics(["maniqa"])
    result = dict(image="scikit-image astronaut 512²", cpu=cpu_model(), torch_threads=torch.get_num_threads())
    for crops in ("resize", "five_point"):
        options = losses.registry.resolve_options(metrics, dict(crops=crops))

        def ours(options=options) -> float:
            with torch.inference_mode():
                return losses.compute(metrics, dict(sr=tensor), options, lambda name: backbone)["maniqa"].item()

        ours()  # warm-up
        ours_s, ours_value = median_seconds(ours)
        reference_score(reference, photo, crops)
        reference_s, reference_value = median_seconds(lambda crops=crops: reference_score(reference, photo, crops))
        result[crops] = dict(
            maniqa_s=round(ours_s, 4),
            transcription_s=round(reference_s, 4),
            speedup=round(reference_s / ours_s, 2),
            maniqa=ours_value,
            transcription=reference_value,
        )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
