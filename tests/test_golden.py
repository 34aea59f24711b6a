"""Golden values: every catalogued metric on fixed real photos and one real clip, as recorded in
``tests/golden/values.json``. A refactor that moves code must leave every number where it was.

Regenerate only on purpose (a deliberate change of a value, said in the commit):
``uv run python -m tests.test_golden --write``.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import degrade, to_tensor

GOLDEN = Path(__file__).parent / "golden" / "values.json"
# Same code, same inputs: only the BLAS and vector width of another CPU move the last bits.
RTOL, ATOL = 1e-5, 1e-7
# Options under which every image metric runs on the 128×128 crops (NIQE needs 2 blocks of 96² at half scale).
CLIP_METRICS = ("psnr", "ssim", "lpips_alex", "tof", "tlp")


def golden_inputs() -> dict:
    from skimage import data

    gts = [data.astronaut()[64:256, 96:288], data.chelsea()[40:232, 100:292]]
    srs = [degrade(gt, seed) for seed, gt in enumerate(gts)]
    clip_gt = np.stack([data.coffee()[20 + 2 * t : 148 + 2 * t, 40 + 3 * t : 200 + 3 * t] for t in range(8)])
    clip_sr = np.stack([degrade(frame, 100 + t) for t, frame in enumerate(clip_gt)])
    return dict(gts=gts, srs=srs, clip_gt=clip_gt, clip_sr=clip_sr)


def compute_values(weights_dir) -> dict[str, float]:
    import losses

    inputs = golden_inputs()
    values: dict[str, float] = {}
    catalogue = losses.list_metrics()
    image_metrics = [m["name"] for m in catalogue if m.get("kind", "image") == "image" and not m["dataset"] and not m.get("clip")]
    for index, (sr, gt) in enumerate(zip(inputs["srs"], inputs["gts"])):
        sr_t, gt_t = to_tensor(sr), to_tensor(gt)
        lr_t = torch.nn.functional.avg_pool2d(gt_t, 4)
        with torch.inference_mode():
            # crops=resize: maniqa_kadid's five 224² crops do not fit these 192² photos
            scores = losses.score(
                sr_t, gt_t, lr=lr_t, teacher=gt_t.flip(-1), metrics=image_metrics, weights_dir=weights_dir, crops="resize"
            )
        values.update({f"image{index}/{name}": float(value[0]) for name, value in scores.items()})
    sets = [to_tensor(image) for image in inputs["srs"] * 2], [to_tensor(image) for image in inputs["gts"][::-1] * 2]
    fid_kid = losses.dataset_score(iter(sets[0]), iter(sets[1]), ("fid", "kid"), weights_dir=weights_dir, subset_size=2, subsets=5)
    values.update({f"set/{name}": value for name, value in fid_kid.items()})
    clip = losses.score_clip(
        torch.from_numpy(inputs["clip_sr"]).permute(0, 3, 1, 2),
        torch.from_numpy(inputs["clip_gt"]).permute(0, 3, 1, 2),
        metrics=CLIP_METRICS,
        skip=1,
        chunk=3,
        weights_dir=weights_dir,
    )
    values.update({f"clip/{name}": value for name, value in clip["per_clip"].items()})
    for name, array in {**clip["per_frame"], **clip["temporal"]}.items():
        values.update({f"clip/{name}[{i}]": float(v) for i, v in enumerate(array)})
    return values


def test_every_metric_keeps_its_golden_value(weights_dir):
    expected = json.loads(GOLDEN.read_text())
    got = compute_values(weights_dir)
    assert sorted(got) == sorted(expected), "the set of golden values changed"
    wrong = {k: (got[k], expected[k]) for k in expected if not math.isclose(got[k], expected[k], rel_tol=RTOL, abs_tol=ATOL)}
    assert not wrong, wrong


if __name__ == "__main__" and "--write" in sys.argv:
    from tests import conftest

    directory = conftest.write_weights(conftest._SANDBOX / "weights")
    GOLDEN.write_text(json.dumps(compute_values(directory), indent=1, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN}")
elif __name__ == "__main__":
    pytest.main([__file__])
