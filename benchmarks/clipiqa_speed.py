"""CLIP-IQA on a 512² photo, side by side in one process (median of 5 each): the library's
``clipiqa`` against the transcription of the authors' ``CLIPIQAFixed`` on open_clip's CLIP in
``tests/test_clipiqa.py`` (all tokens query the attention pool; the text encoder runs per call, as
the authors' forward runs it). Both at RN50's full size with the same seeded random weights:
speed does not depend on the weight values.

`PYTHONPATH=. uv run python benchmarks/clipiqa_speed.py` prints one JSON line.
"""

import json

import numpy as np
import torch
from open_clip.model import CLIP
from skimage import data

import losses
from benchmarks.timing import median_seconds
from losses.nets.backbones import BACKBONES, CLIPLogits
from service.bench.machine import cpu_model
from tests.test_clipiqa import reference_clipiqa


def main() -> None:
    import open_clip

    photo = np.ascontiguousarray(data.astronaut()[:512, :512])
    tensor = torch.from_numpy(photo).permute(2, 0, 1)[None].float() / 255.0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        reference = CLIP(**open_clip.get_model_config("RN50"), quick_gelu=True).eval()
    state = {k: v for k, v in reference.state_dict().items() if k != "attn_mask"}
    backbone = CLIPLogits(BACKBONES["clip_rn50"], state)
    batch_backbone = lambda name, device=None, pretrained=True, weights_dir=None: backbone  # noqa: E731
    metrics = losses.registry.get_metrics(["clipiqa"])
    options = losses.registry.resolve_options(metrics, {})

    def ours() -> float:
        with torch.inference_mode():
            return losses.compute(metrics, dict(sr=tensor), options, batch_backbone)["clipiqa"].item()

    ours()  # warm-up
    ours_s, ours_value = median_seconds(ours)
    prompts = ("Good photo.", "Bad photo.")
    reference_clipiqa(reference, photo, prompts, False)
    reference_s, reference_value = median_seconds(lambda: reference_clipiqa(reference, photo, prompts, False))
    print(
        json.dumps(
            dict(
                image="scikit-image astronaut 512²",
                cpu=cpu_model(),
                torch_threads=torch.get_num_threads(),
                clipiqa_s=round(ours_s, 4),
                transcription_s=round(reference_s, 4),
                speedup=round(reference_s / ours_s, 2),
                clipiqa=ours_value,
                transcription=reference_value,
            )
        )
    )


if __name__ == "__main__":
    main()
