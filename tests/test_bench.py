"""The bench command runs end to end and writes well-formed JSON (no timing is asserted)."""

import json

from service.bench import INPROCESS_METRICS as REGISTRY_ROWS
from service.cli import main


def test_quick_bench_emits_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "--quick", "--sizes", "48", "--batches", "1,2", "--device", "cpu", "--quiet", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["quick"] is True and report["machine"]["device"] == "cpu"
    inprocess = {(r["metric"], r["size"], r["batch"]) for r in report["inprocess"]}
    assert {(m, 48, b) for m in REGISTRY_ROWS for b in (1, 2)} == inprocess
    measured = [r for r in report["inprocess"] if r["seconds"] is not None]
    assert all(r["images_per_s"] > 0 for r in measured)
    assert {r["metric"] for r in report["inprocess"] if r["seconds"] is None} == {"ms_ssim"}  # 48² < MS-SSIM's 176²
    assert {(r["metric"], r["size"]) for r in report["service_metrics"]} == {(m, 48) for m in ("lr_psnr", "lpips_alex", "dists", "clipiqa")}
    assert {(r["mode"], r["concurrency"]) for r in report["service"]} == {(m, c) for m in ("batched", "unbatched") for c in (1, 4, 16)}
    assert set(report["lone_request"]) == {"p50_ms", "compute_p50_ms", "added_ms"}
    peers = {(r["metric"], r["peer"]) for r in report["peers"]}
    assert ("ssim", "loss-service") in peers and ("ssim", "pytorch-msssim") in peers and ("psnr", "torchmetrics") in peers
    ours = next(r for r in report["peers"] if r["peer"] == "loss-service" and r["metric"] == "ssim")
    assert ours["reference"] == "scikit-image" and ours["max_abs_delta_vs_reference"] <= 1e-12
    assert report["machine"]["cpu"] and set(report["machine"]["blas"]) == {"torch", "numpy"}
    assert report["memory"] and all(r["peak_rss_gib"] > 0 for r in report["memory"])
    assert report["budget"]
    for fit in report["budget"]:  # the largest batch fits in 8 GiB and one more image would not
        used = lambda n, fit=fit: fit["fixed_gib"] + n * fit["per_image_gib"]
        assert used(fit["largest_batch_in_8gib"]) <= 8.0 < used(fit["largest_batch_in_8gib"] + 1), fit
    assert "in-process throughput" in capsys.readouterr().out
