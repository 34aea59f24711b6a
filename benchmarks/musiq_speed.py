"""MUSIQ on a 512² photo, side by side in one process (median of 3 each): the library's
``musiq`` against the transcription of the authors' procedure in ``tests/musiq_reference.py``
(TensorFlow's preprocessing step by step in NumPy, padded to the fixed token counts, the flax
network in JAX), and the preprocessing alone (multi-scale patches and positions). Both at the
authors' full size (384-d, 14 layers) with the same seeded random weights.

`PYTHONPATH=. uv run python benchmarks/musiq_speed.py` prints one JSON line.
"""

import json

import numpy as np
import torch
from skimage import data

import losses
from benchmarks.timing import median_seconds
from losses.nets import musiq as M
from losses.nets.backbones import BACKBONES, MUSIQScores
from service.bench.machine import cpu_model
from tests.musiq_reference import generated_params, preprocess, reference_score


def main() -> None:
    photo = np.ascontiguousarray(data.astronaut()[:512, :512])
    tensor = torch.from_numpy(photo).permute(2, 0, 1)[None].float() / 255.0
    params = generated_params(0, sizes=M.AUTHORS_SIZES)
    backbone = MUSIQScores(BACKBONES["musiq_koniq"], {k: torch.from_numpy(v) for k, v in params.items()})
    metrics = losses.registry.get_metrics(["musiq"])
    options = losses.registry.resolve_options(metrics, {})

    def ours() -> float:
        with torch.inference_mode():
            return losses.compute(metrics, dict(sr=tensor), options, lambda name: backbone)["musiq"].item()

    ours()  # warm-up
    ours_s, ours_value = median_seconds(ours, 3)
    reference_score(params, photo)
    reference_s, reference_value = median_seconds(lambda: reference_score(params, photo), 3)
    patches_s, _ = median_seconds(lambda: M.multiscale_tokens(tensor * 2 - 1, 10), 3)
    reference_patches_s, _ = median_seconds(lambda: preprocess(photo), 3)
    print(
        json.dumps(
            dict(
                image="scikit-image astronaut 512²",
                cpu=cpu_model(),
                torch_threads=torch.get_num_threads(),
                musiq_s=round(ours_s, 4),
                transcription_s=round(reference_s, 4),
                speedup=round(reference_s / ours_s, 2),
                preprocessing_s=round(patches_s, 4),
                transcription_preprocessing_s=round(reference_patches_s, 4),
                musiq=ours_value,
                transcription=reference_value,
            )
        )
    )


if __name__ == "__main__":
    main()
