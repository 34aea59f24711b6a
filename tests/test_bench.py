"""The bench command runs end to end and writes well-formed JSON (no timing is asserted)."""

import json

from service.cli import main


def test_quick_bench_emits_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "--quick", "--sizes", "48", "--batches", "1,2", "--device", "cpu", "--quiet", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["quick"] is True and report["machine"]["device"] == "cpu"
    inprocess = {(r["metric"], r["size"], r["batch"]) for r in report["inprocess"]}
    assert {(m, 48, b) for m in ("psnr", "ssim", "perceptual", "lpips_vgg", "clp_vgg19", "clp_dinov2") for b in (1, 2)} == inprocess
    assert all(r["images_per_s"] > 0 for r in report["inprocess"] if r["seconds"] is not None)
    assert {(r["mode"], r["concurrency"]) for r in report["service"]} == {(m, c) for m in ("batched", "unbatched") for c in (1, 4, 16)}
    assert set(report["lone_request"]) == {"p50_ms", "compute_p50_ms", "added_ms"}
    peers = {(r["metric"], r["peer"]) for r in report["peers"]}
    assert ("ssim", "loss-service") in peers and ("ssim", "pytorch-msssim") in peers and ("psnr", "torchmetrics") in peers
    ours = next(r for r in report["peers"] if r["peer"] == "loss-service" and r["metric"] == "ssim")
    assert ours["max_abs_delta_vs_skimage"] <= 1e-6
    assert report["memory"] and all(r["peak_rss_gib"] > 0 for r in report["memory"])
    assert report["budget"] and all(r["largest_batch_in_8gib"] >= 0 for r in report["budget"])
    assert "in-process throughput" in capsys.readouterr().out
