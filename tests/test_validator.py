"""The validator in a real (tiny) training loop against live servers: its values equal
``losses.score`` on the same tensors, a call costs the loop only the enqueue, the bound on
batches in flight holds, and a killed server is logged once while training goes on."""

from __future__ import annotations

import logging
import time

import pytest
import torch
from torch import nn

import losses
from service.client import ConnectionFailed, Validator
from service.client.store import ResultsStore

from .conftest import ScalarWriter, WandbRun
from .servers import SubprocessServer

METRICS = "psnr,ssim,perceptual"


@pytest.fixture(scope="module")
def server(vgg16_server):
    return vgg16_server


def training_batches(seed: int, steps: int):
    """A toy SR task: recover 32² images from a blurred copy."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        gt = torch.rand(4, 3, 32, 32, generator=g)
        yield nn.functional.avg_pool2d(gt, 3, stride=1, padding=1), gt


def test_a_training_loop_validates_without_waiting_and_gets_the_library_values(server, tmp_path):
    torch.manual_seed(0)
    model = nn.Conv2d(3, 3, 3, padding=1)
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1)
    kept, enqueue_seconds = {}, []
    with Validator(server.url, METRICS, max_in_flight=4, store=str(tmp_path / "curves.db"), model="toy", crop_border=2) as validator:
        for step, (lr_images, gt) in enumerate(training_batches(1, 12)):
            sr = model(lr_images).clamp(0, 1)
            loss = nn.functional.l1_loss(sr, gt)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            if step % 4 == 0:
                started = time.perf_counter()
                validator(step, sr, gt)
                enqueue_seconds.append(time.perf_counter() - started)
                kept[step] = (sr.detach().clone(), gt.clone())
                sr.data.fill_(0.5)  # the loop may overwrite its tensors: the validator cloned them
        results = {step: validator.result(step, timeout=120) for step in kept}
    for step, (sr, gt) in kept.items():
        with torch.no_grad():
            expected = losses.score(sr, gt, metrics=METRICS.split(","), crop_border=2)
        for name, values in expected.items():
            got = [image[name] for image in results[step]["per_image"]]
            assert got == pytest.approx(values.tolist(), rel=1e-6), (step, name)
        assert results[step]["mean"]["psnr"] == pytest.approx(expected["psnr"].mean().item(), rel=1e-9)
    assert max(enqueue_seconds) < 0.05  # a clone of 4 small images: the scoring (a VGG16 pass per step) is not waited for
    with ResultsStore(tmp_path / "curves.db") as store:
        steps = {(row.step, row.metric) for row in store.rows()}
    assert steps == {(step, metric) for step in kept for metric in METRICS.split(",")}


def test_when_full_the_oldest_batch_is_dropped_with_a_warning(server, caplog):
    caplog.set_level(logging.WARNING, logger="loss_service.validator")
    sr = torch.rand(2, 3, 64, 64)
    with Validator(server.url, "perceptual", max_in_flight=2, when_full="drop_oldest") as validator:
        started = time.perf_counter()
        futures = [validator(step, sr, sr.flip(-1)) for step in range(6)]
        assert time.perf_counter() - started < 0.05  # never waits: one batch is sent, the rest queue or drop
        validator.result(5, timeout=120)
    assert futures[-1].result()["per_image"][0]["perceptual"] > 0
    dropped = [f for f in futures if f.cancelled()]
    assert dropped and all("dropped" in r.message for r in caplog.records if r.levelno == logging.WARNING)
    assert len([r for r in caplog.records if "dropped" in r.message]) == len(dropped)
    with pytest.raises(ValueError, match="at least 2"):
        Validator(server.url, "psnr", max_in_flight=1, when_full="drop_oldest")


def test_drop_oldest_with_three_in_flight_drops_the_oldest_waiting_steps(server):
    """With room for 3, a burst of 8 keeps the two newest steps: each step that found the queue full
    dropped the oldest one waiting. Which other step survives depends on when the sending thread
    took a batch (step 0 before the burst, or any step during it on a busy machine), so only that is
    left open. Dropping the newest instead would drop step 6."""
    sr = torch.rand(2, 3, 96, 96)
    with Validator(server.url, "perceptual", max_in_flight=3, when_full="drop_oldest") as validator:
        futures = [validator(step, sr, sr.flip(-1)) for step in range(8)]
        validator.result(7, timeout=120)
    dropped = [step for step, future in enumerate(futures) if future.cancelled()]
    kept = [step for step, future in enumerate(futures) if not future.cancelled()]
    assert {6, 7} <= set(kept) and dropped and max(dropped) < 6, (kept, dropped)
    assert len(kept) >= 3  # the sent batch and the two newest waiting
    assert all(futures[step].result()["per_image"][0]["perceptual"] > 0 for step in kept)


def test_a_killed_server_is_logged_once_and_training_goes_on(weights_dir, caplog):
    caplog.set_level(logging.DEBUG, logger="loss_service.validator")
    model = nn.Conv2d(3, 3, 3, padding=1)
    with SubprocessServer("--models", "") as doomed:  # psnr only: no backbone to load
        validator = Validator(doomed.url, "psnr", retries=1, max_in_flight=2)
        sr, gt = next(training_batches(2, 1))
        validator(0, sr, gt)
        assert validator.result(0, timeout=60)["per_image"][0]["psnr"] > 0
        doomed.process.kill()
        doomed.process.wait(30)
    trained = 0
    for step, (lr_images, gt) in enumerate(training_batches(3, 8), start=1):
        model(lr_images).sum().backward()
        trained += 1
        validator(step, model(lr_images).detach().clamp(0, 1), gt)
    validator.close(timeout=120)
    assert trained == 8
    for step in range(1, 9):
        with pytest.raises(ConnectionFailed):
            validator.result(step)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "training goes on" in errors[0].getMessage()


def test_each_result_is_logged_to_tensorboard_and_weights_and_biases(server):
    """Objects with TensorBoard's ``add_scalar`` and W&B's ``log`` get each step's means."""

    writer, run = ScalarWriter(), WandbRun()
    sr, gt = next(training_batches(4, 1))
    with Validator(server.url, "psnr,ssim", writer=writer, wandb_run=run) as validator:
        validator(7, sr, gt)
        mean = validator.result(7, timeout=60)["mean"]
    assert sorted(writer.scalars) == sorted((f"validation/{name}", value, 7) for name, value in mean.items())
    assert run.logged == [({f"validation/{name}": value for name, value in mean.items()}, 7)]
