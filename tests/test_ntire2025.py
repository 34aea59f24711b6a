"""The NTIRE 2025 ×4 perceptual score: the formula over its parts, each part equal to its own
entry, and ``eval --preset NTIRE2025-perceptual`` on folders of images."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import losses
from losses.registry import NTIRE2025_PARTS
from service.cli import main as cli_main

from .conftest import degrade, to_tensor


def pairs(photos):
    """Two 192² photo crops with degraded copies, and pure noise (NIQE far above 10, so its term clamps at 0)."""
    gts = [photos[0][:192, :192], photos[1][:192, 100:292]]
    srs = [degrade(gt, seed) for seed, gt in enumerate(gts)]
    noise = np.random.default_rng(5).integers(0, 256, (192, 192, 3), dtype=np.uint8)
    return [*srs, noise], [*gts, gts[0]]


def test_the_score_is_the_challenges_formula_over_parts_equal_to_their_entries(photos, weights_dir):
    srs, gts = pairs(photos)
    sr, gt = torch.cat([to_tensor(x) for x in srs]), torch.cat([to_tensor(x) for x in gts])
    scores = losses.score(sr, gt, metrics=["ntire2025_perceptual"])
    alone = losses.score(sr, gt, metrics=list(NTIRE2025_PARTS))
    parts = {name: alone[name].double() for name in NTIRE2025_PARTS}
    for name in NTIRE2025_PARTS:
        torch.testing.assert_close(scores[f"ntire2025_perceptual.{name}"].double(), parts[name], rtol=1e-6, atol=1e-7)
    niqe_term = torch.clamp((10 - parts["niqe"]) / 10, min=0)
    expected = 2 - parts["lpips_alex"] - parts["dists"] + parts["clipiqa"] + parts["maniqa"] + parts["musiq"] / 100 + niqe_term
    torch.testing.assert_close(scores["ntire2025_perceptual"].double(), expected, rtol=1e-6, atol=1e-6)
    assert parts["niqe"][2] > 10 and niqe_term[2] == 0 and (parts["niqe"] < 10).any()  # the clamp, both ways
    entry = losses.REGISTRY["ntire2025_perceptual"]
    assert entry.lower_is_better is False and "2504.14582" in entry.convention


def test_eval_preset_scores_the_challenge_score_of_image_folders(photos, weights_dir, tmp_path):
    srs, gts = pairs(photos)
    for folder, images in (("sr", srs[:2]), ("gt", gts[:2])):
        (tmp_path / folder).mkdir()
        for index, image in enumerate(images):
            Image.fromarray(image).save(tmp_path / folder / f"{index:02d}.png")
    out = tmp_path / "run.json"
    argv = ["eval", "--weights-dir", str(weights_dir), "--sr", str(tmp_path / "sr"), "--gt", str(tmp_path / "gt")]
    status = cli_main([*argv, "--preset", "NTIRE2025-perceptual", "--out", str(tmp_path / "run.csv"), "--json", str(out), "--quiet"])
    assert status == 0
    run = json.loads(out.read_text())
    rows = {row["image"]: row["scores"] for row in run["results"]}
    sr, gt = torch.cat([to_tensor(x) for x in srs[:2]]), torch.cat([to_tensor(x) for x in gts[:2]])
    expected = losses.score(sr, gt, metrics=["ntire2025_perceptual"])
    for index, image in enumerate(sorted(rows)):
        assert rows[image]["ntire2025_perceptual"] == pytest.approx(expected["ntire2025_perceptual"][index].item(), rel=1e-5)
        assert {f"ntire2025_perceptual.{name}" for name in NTIRE2025_PARTS} <= set(rows[image])
    assert run["dataset"] == "NTIRE2025-perceptual" and run["metrics"] == ["ntire2025_perceptual"]
    summary = run.get("summary") or next(iter(run["models"].values()))["summary"]
    directions = {name: summary[f"ntire2025_perceptual{name}"]["lower_is_better"] for name in ("", ".niqe", ".lpips_alex", ".musiq")}
    assert directions == {"": False, ".niqe": True, ".lpips_alex": True, ".musiq": False}  # each part ranked its own way
