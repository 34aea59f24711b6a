"""``eval --ray`` on a local Ray instance (2 CPUs, shared by the module): the same per-image
values as ``losses.score`` on the same files, a corrupt image failing alone, a scoring actor
killed mid-run, ``--resume``, and an unreachable cluster. Needs the ``ray`` extra: the module
skips without it (``.ci/run`` runs it in its own tier with ``uv run --extra ray``)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

# Workers run this interpreter, as eval --ray sets it (service/cluster): read when ray is imported.
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
ray = pytest.importorskip("ray", reason="the ray extra is not installed (uv run --extra ray pytest tests/test_ray_eval.py)")

import losses  # noqa: E402
from service.cli import main as cli_main  # noqa: E402

from .conftest import degrade, to_tensor  # noqa: E402

METRICS = "psnr,ssim,niqe"


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def write_folders(root, photos, count: int, size: int = 192):
    """``count`` GT crops of the photos and degraded SR copies, as PNGs; image 3's SR is corrupt."""
    from skimage import data

    sources = [*photos, data.coffee(), data.rocket()]
    (root / "sr").mkdir()
    (root / "gt").mkdir()
    pairs = {}
    for index in range(count):
        source = sources[index % len(sources)]
        top, left = (7 * index) % (source.shape[0] - size), (11 * index) % (source.shape[1] - size)
        gt = np.ascontiguousarray(source[top : top + size, left : left + size])
        sr = degrade(gt, index)
        Image.fromarray(gt).save(root / "gt" / f"{index:03d}.png")
        Image.fromarray(sr).save(root / "sr" / f"{index:03d}.png")
        pairs[f"{index:03d}"] = (sr, gt)
    (root / "sr" / "003.png").write_bytes(b"not a png")
    return pairs


def eval_ray(root, *extra: str) -> tuple[int, dict]:
    argv = ["eval", "--ray", "--sr", str(root / "sr"), "--gt", str(root / "gt"), "--metrics", METRICS, "--quiet"]
    argv += ["--out", str(root / "run.csv"), "--json", str(root / "run.json"), "--ray-batch-size", "4", *extra]
    status = cli_main(argv)
    return status, json.loads((root / "run.json").read_text())


def rows_of(root, folder: str = "run.parquet") -> list[dict]:
    import pyarrow.parquet as pq

    return [row for path in sorted((root / folder).glob("*.parquet")) for row in pq.read_table(path).to_pylist()]


def test_values_equal_the_library_and_a_corrupt_image_fails_alone(local_ray, photos, tmp_path):
    pairs = write_folders(tmp_path, photos, 10)
    status, run = eval_ray(tmp_path)
    assert status == 1  # one failure
    results = {r["image"]: r["scores"] for r in run["results"]}
    assert sorted(results) == sorted(set(pairs) - {"003"})
    assert [f["image"] for f in run["failures"]] == ["003"] and "sr" in run["failures"][0]["message"]
    for image, scores in results.items():
        sr, gt = pairs[image]
        expected = losses.score(to_tensor(sr), to_tensor(gt), metrics=METRICS.split(","))
        assert scores == {name: value.item() for name, value in expected.items()}, image  # bit for bit
    rows = rows_of(tmp_path)
    assert sorted(row["image"] for row in rows) == sorted(pairs)  # each image once, the failure with its error
    assert run["server"]["backend"] == "ray" and run["summary"]["psnr"]["count"] == 9


def scorer_pids() -> list[int]:
    """The processes of live scoring actors (Ray names an actor's process after its class)."""
    pids = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                if b"MapBatches(Scorer)" in handle.read():
                    pids.append(int(entry))
        except (OSError, ValueError):
            continue
    return pids


def test_a_killed_actor_is_restarted_and_every_image_is_scored_once(local_ray, photos, tmp_path):
    """The scoring actor is SIGKILLed once it is up; Ray restarts it and runs its batch again,
    and the output still holds every image exactly once."""
    pairs = write_folders(tmp_path, photos, 40)
    killed = []

    def kill_the_scorer():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            pids = scorer_pids()
            if pids:
                time.sleep(1.0)  # let it take its first batch
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])
            time.sleep(0.05)

    killer = threading.Thread(target=kill_the_scorer, daemon=True)
    killer.start()
    status, run = eval_ray(tmp_path, "--ray-actors", "1", "--ray-batch-size", "2")
    killer.join(timeout=5)
    assert killed, "the run ended before the actor could be killed"
    images = sorted(row["image"] for row in rows_of(tmp_path))
    assert images == sorted(pairs) and status == 1  # once each; 003 is the corrupt one
    assert len(run["results"]) == len(pairs) - 1


def test_resume_scores_only_what_the_output_lacks(local_ray, photos, tmp_path):
    """A run cut short (blocks missing) completes with --resume: no gap, no duplicate, in the
    Parquet rows and in the results store alike."""
    from service.client.store import ResultsStore

    write_folders(tmp_path, photos, 6)
    store = str(tmp_path / "results.db")
    eval_ray(tmp_path, "--store", store)
    first = rows_of(tmp_path)
    kept = [path for path in sorted((tmp_path / "run.parquet").glob("*.parquet"))]
    for path in kept[1:]:  # as if the driver had stopped after the first block
        path.unlink()
    remaining = {row["image"] for row in rows_of(tmp_path)}
    assert eval_ray(tmp_path)[0] == 2  # rows of an earlier run: refused without --resume
    with ResultsStore(store) as stored:  # every image it scored, once: psnr, ssim, niqe and niqe's 2 components
        assert len(stored.rows()) == 5 * 5
    status, run = eval_ray(tmp_path, "--resume", "--store", store)
    rows = rows_of(tmp_path)
    assert sorted(row["image"] for row in rows) == sorted(row["image"] for row in first)  # no gap, no duplicate
    assert remaining < {row["image"] for row in rows}
    assert len(run["results"]) + len(run["failures"]) == 6
    with ResultsStore(store) as stored:  # the images scored again are in the store already: not twice
        assert len(stored.rows()) == 5 * 5 and {row.image for row in stored.rows()} == {r["image"] for r in run["results"]}


def test_an_unreachable_cluster_is_a_clear_error(tmp_path, photos):
    """In a process of its own (this one holds the module's local instance)."""
    import subprocess
    import sys

    write_folders(tmp_path, photos, 2)
    argv = ["eval", "--ray", "127.0.0.1:9", "--sr", str(tmp_path / "sr"), "--gt", str(tmp_path / "gt"), "--metrics", "psnr"]
    code = f"from service.cli import main; raise SystemExit(main({[*argv, '--out', str(tmp_path / 'run.csv')]!r}))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "127.0.0.1:9" in done.stderr, done.stderr[-2000:]


def test_ray_scores_match_a_batched_library_call_for_a_network_metric(local_ray, photos, tmp_path, weights_dir):
    """lpips_alex, a float32 network: each actor call scores its equal-size images as one batch,
    so values equal ``losses.score`` on that batch to float32 rounding."""
    pairs = write_folders(tmp_path, photos, 4)
    argv = ["eval", "--ray", "--sr", str(tmp_path / "sr"), "--gt", str(tmp_path / "gt"), "--metrics", "lpips_alex", "--quiet"]
    argv += ["--weights-dir", str(weights_dir)]
    cli_main([*argv, "--out", str(tmp_path / "run.csv"), "--json", str(tmp_path / "run.json")])
    run = json.loads((tmp_path / "run.json").read_text())
    for result in run["results"]:
        sr, gt = pairs[result["image"]]
        expected = losses.score(to_tensor(sr), to_tensor(gt), metrics=["lpips_alex"])["lpips_alex"].item()
        assert result["scores"]["lpips_alex"] == pytest.approx(expected, rel=1e-5)
    assert run["server"]["pretrained"] is True


def test_missing_weights_are_named_before_any_worker_starts(local_ray, photos, tmp_path, capsys):
    write_folders(tmp_path, photos, 2)
    argv = ["eval", "--ray", "--sr", str(tmp_path / "sr"), "--gt", str(tmp_path / "gt"), "--metrics", "lpips_alex", "--quiet"]
    status = cli_main([*argv, "--weights-dir", str(tmp_path / "empty"), "--out", str(tmp_path / "run.csv")])
    assert status == 2 and "alexnet" in capsys.readouterr().err and not (tmp_path / "run.parquet").exists()


def test_a_workers_error_is_said_in_one_line():
    from service.cluster import root_cause

    inner = FileNotFoundError("weights for 'alexnet' not found")
    wrapped = RuntimeError("ray::MapWorker.__init__()\n  File x\nlosses.nets.weights.WeightsNotFoundError: weights for 'alexnet' not found")
    wrapped.__cause__ = inner
    assert root_cause(wrapped) == "WeightsNotFoundError: weights for 'alexnet' not found"


def write_set(folder, photos, count: int, seed: int, noise: float, sizes=((160, 160), (128, 192))) -> list[np.ndarray]:
    """``count`` crops of the photos in two sizes (so a batch holds images of both), noisy by ``noise``."""
    folder.mkdir()
    rng = np.random.default_rng(seed)
    crops = []
    for index in range(count):
        source = photos[index % len(photos)]
        height, width = sizes[index % len(sizes)]
        top, left = rng.integers(0, source.shape[0] - height), rng.integers(0, source.shape[1] - width)
        crop = source[top : top + height, left : left + width].astype(np.float64)
        crop = np.clip(crop + rng.normal(0, noise, crop.shape), 0, 255).round().astype(np.uint8)
        Image.fromarray(crop).save(folder / f"{index:03d}.png")
        crops.append(crop)
    return crops


def test_fid_and_kid_on_two_actors_equal_one_pass_and_an_unreadable_image_fails_its_set(local_ray, photos, tmp_path, weights_dir):
    """Each block's FeatureStats merged on the driver give one pass's FID to 1e-10, and KID's rows,
    put back in file-name order, its KID; a model whose set holds an unreadable image gets no value,
    the image named. A per-image metric in the same run is scored as usual."""
    sr = write_set(tmp_path / "sr", photos, 11, seed=1, noise=12.0)
    gt = write_set(tmp_path / "gt", photos, 13, seed=2, noise=0.0)
    write_set(tmp_path / "broken", photos, 9, seed=3, noise=12.0)
    (tmp_path / "broken" / "004.png").write_bytes(b"not a png")
    argv = ["eval", "--ray", "--sr", f"a={tmp_path / 'sr'}", "--sr", f"b={tmp_path / 'broken'}", "--gt", str(tmp_path / "gt")]
    argv += ["--metrics", "fid,kid", "--options", '{"subset_size": 8}', "--weights-dir", str(weights_dir), "--quiet"]
    argv += ["--ray-actors", "2", "--ray-batch-size", "3", "--out", str(tmp_path / "run.csv"), "--json", str(tmp_path / "run.json")]
    assert cli_main(argv) == 1  # b's set has no value
    run = json.loads((tmp_path / "run.json").read_text())
    threads = torch.get_num_threads()
    try:  # an actor's share of 2 CPUs is under one: torch runs it on 1 thread, and float32 convolutions round by their thread count
        torch.set_num_threads(1)
        one_pass = losses.dataset_score(map(to_tensor, sr), map(to_tensor, gt), ["fid", "kid"], subset_size=8, weights_dir=weights_dir)
    finally:
        torch.set_num_threads(threads)
    got = run["models"]["a"]["dataset_metrics"]["values"]
    assert got["fid"] == pytest.approx(one_pass["fid"], rel=1e-10) and got["fid"] > 1.0
    assert got["kid"] == pytest.approx(one_pass["kid"], rel=1e-10)
    assert got["kid.std"] == pytest.approx(one_pass["kid.std"], rel=1e-10)
    assert run["models"]["a"]["dataset_metrics"]["sr_count"] == 11 and run["models"]["a"]["summary"]["fid"]["mean"] == got["fid"]
    broken = run["models"]["b"]
    assert "dataset_metrics" not in broken and [Path(f["image"]).name for f in broken["failures"]] == ["004.png"]
    assert "fid, kid" in broken["failures"][0]["message"]
    assert run["conventions"]["metrics"]["kid"]["options"]["subset_size"] == 8


def test_filter_on_ray_decides_by_the_librarys_values_and_resumes_a_stopped_run(local_ray, photos, tmp_path, capsys):
    import csv

    folder = tmp_path / "crawl"
    folder.mkdir()
    images = [photo[:192, :192] for photo in photos] + [degrade(photo[:192, :192], seed) for seed, photo in enumerate(photos)]
    for index, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{index}.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    values = {f"{i}.png": losses.score(to_tensor(image), metrics=["niqe"])["niqe"].item() for i, image in enumerate(images)}
    threshold = float(np.median(list(values.values())))
    manifest = tmp_path / "manifest.csv"
    argv = ["filter", str(folder), "--keep", f"niqe < {threshold!r}", "--ray", "--manifest", str(manifest), "--quiet"]
    argv += ["--ray-batch-size", "2"]
    assert cli_main(argv) == 1  # a file could not be read
    rows = {row["path"].rsplit("/", 1)[-1]: row for row in csv.DictReader(manifest.open())}
    assert set(rows) == {*values, "broken.png"} and rows["broken.png"]["decision"] == "unreadable"
    assert "not a decodable image" in rows["broken.png"]["error"]
    for name, value in values.items():
        assert float(rows[name]["niqe"]) == value and rows[name]["decision"] == ("kept" if value < threshold else "dropped")
    assert "kept 3, dropped 3, unreadable 1 of 7" in capsys.readouterr().err

    parquet = sorted((tmp_path / "manifest.parquet").glob("*.parquet"))
    for path in parquet[1:]:  # as if the driver had stopped after one block, before the manifest
        path.unlink()
    manifest.unlink()
    assert cli_main([*argv, "--resume"]) == 1
    again = {row["path"].rsplit("/", 1)[-1]: row for row in csv.DictReader(manifest.open())}
    assert again == rows
    rescored = [row["image"] for row in rows_of(tmp_path, "manifest.parquet")]
    assert sorted(rescored) == sorted({*rescored}) and len(rescored) == 7  # no file twice, none missing


def test_clips_on_ray_score_as_the_library_and_a_broken_clip_fails_alone(local_ray, photos, tmp_path):
    """A REDS-like layout and a folder of FFV1 videos: per-clip values equal ``losses.score_clip``'s;
    a clip with an unreadable frame fails alone; ``--resume`` after a lost JSON scores nothing again."""
    from .test_video import clip_pair, write_video

    clips = {"000": clip_pair(photos), "011": tuple(c[:6] for c in clip_pair(photos[1:]))}
    for role in ("GT", "SR"):
        for name, (sr, gt) in clips.items():
            (tmp_path / role / name).mkdir(parents=True)
            for index, frame in enumerate(gt if role == "GT" else sr):
                Image.fromarray(frame).save(tmp_path / role / name / f"{index}.png")
    (tmp_path / "SR" / "011" / "3.png").write_bytes(b"not a png")
    (tmp_path / "videos").mkdir()
    for name, (sr, _) in clips.items():
        write_video(tmp_path / "videos" / f"{name}.mkv", sr, "ffv1", "bgr0")
    argv = ["eval", "--ray", "--sr", f"frames={tmp_path / 'SR'}", "--sr", f"video={tmp_path / 'videos'}", "--gt", str(tmp_path / "GT")]
    argv += ["--metrics", "psnr,tof", "--json", str(tmp_path / "clips.json"), "--out", str(tmp_path / "f.csv"), "--quiet"]
    assert cli_main(argv) == 1  # frames/011 failed
    data = json.loads((tmp_path / "clips.json").read_text())
    assert data["backend"] == "ray" and data["conventions"]["metrics"]["tof"]
    to = lambda x: torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255.0  # noqa: E731
    expected = {name: losses.score_clip(to(sr), to(gt), metrics=["psnr", "tof"]) for name, (sr, gt) in clips.items()}
    assert sorted(data["models"]["video"]["clips"]) == ["000", "011"] and sorted(data["models"]["frames"]["clips"]) == ["000"]
    for model, clip in (("frames", "000"), ("video", "000"), ("video", "011")):
        got = data["models"][model]["clips"][clip]["per_clip"]
        assert got["psnr"] == pytest.approx(expected[clip]["per_clip"]["psnr"], rel=1e-9)
        assert got["tof"] == pytest.approx(expected[clip]["per_clip"]["tof"], rel=1e-5)
    (failure,) = data["models"]["frames"]["failures"]
    assert failure["clip"] == "011" and "sr[3]" in failure["message"]

    (tmp_path / "clips.json").unlink()  # as if the driver had stopped before writing it
    assert cli_main([*argv, "--resume"]) == 1
    again = json.loads((tmp_path / "clips.json").read_text())
    assert again["models"]["video"]["clips"] == data["models"]["video"]["clips"]
    (failure,) = again["models"]["frames"]["failures"]  # tried again, said once
    scored = sorted((row["model"], row["clip"]) for row in rows_of(tmp_path, "f.parquet") if not row["error"])
    assert scored == [("frames", "000"), ("video", "000"), ("video", "011")]  # none scored twice
