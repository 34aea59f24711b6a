"""NIQE on a 512² photo, side by side in one process (median of 15 calls each): the library's ``matlab``
convention (vectorised blocks, separable filters) and its ``basicsr`` convention (BasicSR's
float32 loop) against the block-by-block transcription of BasicSR's ``niqe.py`` in
``tests/test_niqe.py`` (the ``basicsr`` reference: BasicSR's own procedure and speed).

`uv run python benchmarks/niqe_speed.py` prints one JSON line.
"""

import json

import numpy as np
import torch
from skimage import data

import losses
from benchmarks.timing import median_seconds
from service.bench.machine import cpu_model
from tests.test_niqe import reference_calculate_niqe


def main() -> None:
    photo = np.ascontiguousarray(data.astronaut()[:512, :512])
    tensor = torch.from_numpy(photo).permute(2, 0, 1)[None].float() / 255.0
    losses.score(tensor, metrics=["niqe"])  # loads the pristine model once
    ours, ours_value = median_seconds(lambda: losses.score(tensor, metrics=["niqe"])["niqe"].item(), 15)
    basicsr, basicsr_value = median_seconds(lambda: losses.score(tensor, metrics=["niqe"], convention="basicsr")["niqe"].item(), 15)
    looped, looped_value = median_seconds(lambda: reference_calculate_niqe(photo, 0, convention="basicsr"), 15)
    print(
        json.dumps(
            dict(
                image="scikit-image astronaut 512²",
                cpu=cpu_model(),
                torch_threads=torch.get_num_threads(),
                matlab_s=round(ours, 4),
                basicsr_s=round(basicsr, 4),
                transcription_s=round(looped, 4),
                matlab_speedup=round(looped / ours, 1),
                niqe_matlab=ours_value,
                niqe_basicsr=basicsr_value,
                transcription_niqe=looped_value,
            )
        )
    )


if __name__ == "__main__":
    main()
