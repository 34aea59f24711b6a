"""The validator's queue, its hand-off to the client and its logging, in this process: a client
that answers only as the test lets it makes every step's fate exact (which steps are
dropped, when a call blocks, what ``close`` waits for), and a server in a thread (``create_app``,
no backbone) checks the values against the library. Fast, and visible to mutation testing
(``service/client/validator.py``); ``test_validator.py`` runs a training loop against real servers."""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import CancelledError

import numpy as np
import pytest
import torch

import losses
from service.client import validator as validator_module
from service.client.errors import BadRequest, ConnectionFailed
from service.client.store import ResultsStore, conventions_hash
from service.client.validator import Validator

from .conftest import ScalarWriter, WandbRun

# A validator's thread must never die of an exception: the training loop would wait for results forever.
pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")

CONVENTIONS = {"psnr": {"crop_border": 0}, "date": "2026-01-01T00:00:00"}


class GatedClient:
    """Stands in for ``LossClient``: ``score_batch`` announces each batch it is handed, waits until
    the test lets one answer through (``answer_one``, or ``open`` for all), then answers with each
    image's mean pixel as ``psnr`` (or raises ``failures``' next)."""

    made: list[GatedClient] = []

    def __init__(self, url, api_key=None, timeout=None, retries=None):
        self.args = dict(url=url, api_key=api_key, timeout=timeout, retries=retries)
        self.gate, self.handed = threading.Semaphore(0), threading.Semaphore(0)
        self.sent: list[tuple[list[dict], str, dict]] = []
        self.failures: list[Exception] = []
        self.answers: dict[int, dict] = {}  # index of the batch → answer to give instead
        self.closed = False
        GatedClient.made.append(self)

    def score_batch(self, triplets, metrics=None, **options):
        self.handed.release()
        assert self.gate.acquire(timeout=10), "the test never let this batch's answer through"
        self.sent.append((list(triplets), metrics, options))
        if self.failures:
            raise self.failures.pop(0)
        if len(self.sent) - 1 in self.answers:
            return self.answers[len(self.sent) - 1]
        results = [{"scores": {"psnr": float(np.asarray(t["sr"], np.float64).mean())}} for t in self.sent[-1][0]]
        return dict(results=results, mean={"psnr": float(np.mean([r["scores"]["psnr"] for r in results]))}, conventions=CONVENTIONS)

    def close(self):
        self.closed = True

    def answer_one(self) -> None:
        self.gate.release()

    def open(self) -> None:
        self.gate.release(10_000)

    def wait_handed(self, count: int = 1) -> None:
        for _ in range(count):
            assert self.handed.acquire(timeout=10), "the validator never handed a batch to the client"


@pytest.fixture
def gated(monkeypatch):
    GatedClient.made.clear()
    monkeypatch.setattr(validator_module, "LossClient", GatedClient)

    def make(**kwargs) -> tuple[Validator, GatedClient]:
        validator = Validator("http://scorer:8000", **kwargs)
        return validator, GatedClient.made[-1]

    return make


def images(value: float, batch: int = 1, size: int = 4) -> torch.Tensor:
    return torch.full((batch, 3, size, size), value)


def sent_steps(client: GatedClient) -> list[float]:
    """The steps in the order the client got them (each test batch's pixels are its step / 100)."""
    return [round(float(np.asarray(triplets[0]["sr"]).mean()) * 100) for triplets, _, _ in client.sent]


def test_the_client_gets_the_url_key_timeout_and_retries_and_the_default_metrics(gated):
    validator, client = gated()
    assert client.args == dict(url="http://scorer:8000", api_key=None, timeout=120.0, retries=4)
    client.open()
    validator(0, images(0.5), images(0.25))
    validator.close(timeout=10)
    assert client.sent[0][1] == "psnr,ssim" and client.sent[0][2] == {} and client.closed
    validator, client = gated(metrics="lpips_alex", api_key="k", timeout=7.5, retries=1, crop_border=4, y_channel=True)
    assert client.args == dict(url="http://scorer:8000", api_key="k", timeout=7.5, retries=1)
    client.open()
    validator(0, images(0.5), images(0.25))
    validator.close(timeout=10)
    assert client.sent[0][1:] == ("lpips_alex", {"crop_border": 4, "y_channel": True})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(when_full="drop_newest"), "when_full must be one of ('block', 'drop_oldest'), got 'drop_newest'"),
        (dict(max_in_flight=0), "max_in_flight must be at least 1 with when_full='block' (the batch being sent is never dropped), got 0"),
        (
            dict(max_in_flight=1, when_full="drop_oldest"),
            "max_in_flight must be at least 2 with when_full='drop_oldest' (the batch being sent is never dropped), got 1",
        ),
    ],
)
def test_settings_that_cannot_work_are_refused_before_any_thread_starts(gated, kwargs, message):
    threads = threading.active_count()
    with pytest.raises(ValueError) as refused:
        gated(**kwargs)
    assert str(refused.value) == message
    assert not GatedClient.made and threading.active_count() == threads


def test_the_smallest_bounds_are_accepted(gated):
    for kwargs in (dict(max_in_flight=1), dict(max_in_flight=2, when_full="drop_oldest")):
        validator, client = gated(**kwargs)
        client.open()
        validator(0, images(0.01), images(0.0))
        assert validator.result(0, timeout=10)["per_image"] == [{"psnr": pytest.approx(0.01)}]
        validator.close(timeout=10)


def test_drop_oldest_drops_exactly_the_oldest_waiting_steps_and_warns_for_each(gated, caplog):
    caplog.set_level(logging.WARNING, logger="loss_service.validator")
    validator, client = gated(max_in_flight=3, when_full="drop_oldest")
    futures = [validator(0, images(0.0), images(0.0))]
    client.wait_handed()  # step 0 is being sent: it is never dropped
    started = time.perf_counter()
    futures += [validator(step, images(step / 100), images(0.0)) for step in range(1, 8)]
    assert time.perf_counter() - started < 5  # never waits for the gate
    assert [step for step, future in enumerate(futures) if future.cancelled()] == [1, 2, 3, 4, 5]
    assert [r.getMessage() for r in caplog.records] == [
        f"validation of step {step} dropped: 3 batches already in flight (max_in_flight)" for step in range(1, 6)
    ]
    client.open()
    assert validator.result(7, timeout=10)["per_image"] == [{"psnr": pytest.approx(0.07)}]
    validator.close(timeout=10)
    assert sent_steps(client) == [0, 6, 7]
    with pytest.raises(CancelledError):
        validator.result(3, timeout=10)


def test_drop_oldest_under_the_bound_drops_nothing(gated, caplog):
    caplog.set_level(logging.WARNING, logger="loss_service.validator")
    validator, client = gated(max_in_flight=4, when_full="drop_oldest")
    validator(0, images(0.0), images(0.0))
    client.wait_handed()
    futures = [validator(step, images(step / 100), images(0.0)) for step in (1, 2, 3)]
    assert not any(f.cancelled() for f in futures) and not caplog.records
    client.open()
    validator.close(timeout=10)
    assert sent_steps(client) == [0, 1, 2, 3]


def submit_in_thread(validator: Validator, step: int) -> threading.Thread:
    thread = threading.Thread(target=validator, args=(step, images(step / 100), images(0.0)), daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("max_in_flight", [None, 2])
def test_block_waits_for_room_then_queues_in_order(gated, max_in_flight):
    bound = max_in_flight or 4  # the default
    validator, client = gated(**({} if max_in_flight is None else dict(max_in_flight=max_in_flight)))
    validator(0, images(0.0), images(0.0))
    client.wait_handed()
    for step in range(1, bound):
        validator(step, images(step / 100), images(0.0))  # room for these: returns at once
    waiting = submit_in_thread(validator, bound)
    waiting.join(0.3)
    assert waiting.is_alive(), f"a call with {bound} batches in flight must wait for room"
    client.open()
    waiting.join(10)
    assert not waiting.is_alive()
    validator.close(timeout=10)
    assert sent_steps(client) == list(range(bound + 1))
    assert not any(validator.results[step].cancelled() for step in range(bound + 1))


def test_each_finished_batch_makes_room_for_one_more(gated):
    validator, client = gated(max_in_flight=2)
    client.open()
    for step in range(10):  # would wait forever if a finished batch left its place taken
        validator(step, images(step / 100), images(0.0))
    validator.close(timeout=10)
    assert sent_steps(client) == list(range(10))


def test_close_scores_what_is_queued_then_refuses_new_batches(gated):
    validator, client = gated(max_in_flight=8)
    for step in range(3):
        validator(step, images(step / 100), images(0.0))
    closer = threading.Thread(target=validator.close, kwargs=dict(timeout=10), daemon=True)
    closer.start()
    closer.join(0.2)
    assert closer.is_alive() and not client.closed  # waits for the queued steps
    client.open()
    closer.join(10)
    assert sent_steps(client) == [0, 1, 2] and client.closed
    assert [validator.result(step, timeout=10)["mean"]["psnr"] for step in range(3)] == pytest.approx([0.0, 0.01, 0.02])
    with pytest.raises(RuntimeError, match="^the validator is closed$"):
        validator(3, images(0.0), images(0.0))


def test_one_daemon_thread_named_for_the_validator_until_it_is_closed(gated):
    """Named, so that a stack dump says whose it is; a daemon, so that a loop that never closes its
    validator still exits."""
    before = set(threading.enumerate())
    validator, client = gated()
    with validator:
        (thread,) = set(threading.enumerate()) - before
        assert thread.name == "loss-service-validator" and thread.daemon
    assert not thread.is_alive() and client.closed


def test_a_finished_batch_frees_exactly_one_place(gated):
    """With room for 3: step 0 sent, 1 and 2 waiting. Once step 0 is answered (and step 1 sent),
    there is room for one more call, not two."""
    validator, client = gated(max_in_flight=3)
    validator(0, images(0.0), images(0.0))
    client.wait_handed()
    validator(1, images(0.01), images(0.0))
    validator(2, images(0.02), images(0.0))
    client.answer_one()
    client.wait_handed()  # step 1 is being sent: steps 1 and 2 in flight
    validator(3, images(0.03), images(0.0))
    waiting = submit_in_thread(validator, 4)
    waiting.join(0.3)
    assert waiting.is_alive(), "a fourth batch in flight with max_in_flight=3"
    client.open()
    waiting.join(10)
    validator.close(timeout=10)
    assert sent_steps(client) == [0, 1, 2, 3, 4]


def test_result_and_close_honour_their_timeouts(gated):
    validator, client = gated()
    validator(0, images(0.0), images(0.0))
    client.wait_handed()
    with pytest.raises(TimeoutError):
        validator.result(0, timeout=0.05)
    started = time.perf_counter()
    validator.close(timeout=0.2)  # gives up waiting for the step being sent
    assert time.perf_counter() - started < 5 and validator._thread.is_alive() and client.closed
    client.open()
    assert validator.result(0, timeout=10)["mean"]["psnr"] == 0.0


def test_the_images_sent_are_clones_as_float32_host_arrays(gated):
    validator, client = gated()
    sr = torch.rand(2, 3, 5, 7, dtype=torch.float64)
    gt, lr = torch.rand(2, 3, 5, 7), torch.rand(2, 3, 3, 4)
    expected = {role: t.permute(0, 2, 3, 1).float().numpy().copy() for role, t in (("sr", sr), ("gt", gt), ("lr", lr))}
    validator(0, sr, gt, lr)
    sr.fill_(0.0)  # the loop overwrites its tensors: the validator cloned them
    client.open()
    validator(1, sr.requires_grad_(), None)  # a tensor that needs grad, and no gt
    validator.close(timeout=10)
    first, second = client.sent[0][0], client.sent[1][0]
    assert [sorted(t) for t in first] == [["gt", "lr", "sr"]] * 2 and [sorted(t) for t in second] == [["sr"]] * 2
    for index in range(2):
        for role, array in expected.items():
            assert first[index][role].dtype == np.float32 and first[index][role].shape == array.shape[1:]
            np.testing.assert_array_equal(first[index][role], array[index])
    assert not second[0]["sr"].any()


def test_eight_bit_rounds_and_clips_to_uint8(gated):
    validator, client = gated(eight_bit=True)
    values = torch.tensor([-0.5, 0.0, 0.4 / 255, 0.6 / 255, 127.5 / 255 - 1e-4, 0.5, 1.0, 1.5])
    sr = values.view(1, 1, 1, 8).expand(1, 3, 1, 8).contiguous()
    client.open()
    validator(0, sr, sr)
    validator.close(timeout=10)
    sent = client.sent[0][0][0]["sr"]
    assert sent.dtype == np.uint8 and sent.shape == (1, 8, 3)
    assert sent[0, :, 0].tolist() == [0, 0, 0, 1, 127, 128, 255, 255]


def test_means_go_to_the_writer_and_the_run_without_missing_values(gated):
    writer, run = ScalarWriter(), WandbRun()
    validator, client = gated(writer=writer, wandb_run=run)
    scores = {"psnr": 30.0, "niqe": None}
    client.answers[0] = dict(results=[{"scores": scores}], mean=scores, conventions=CONVENTIONS)
    client.open()
    validator(12, images(0.3), images(0.3))
    validator.close(timeout=10)
    assert writer.scalars == [("validation/psnr", 30.0, 12)]
    assert run.logged == [({"validation/psnr": 30.0}, 12)]
    assert validator.result(12, timeout=10) == dict(
        per_image=[{"psnr": 30.0, "niqe": None}], mean={"psnr": 30.0, "niqe": None}, conventions=CONVENTIONS
    )


def test_the_store_gets_each_scored_image_under_its_step_and_conventions(gated, tmp_path):
    path = tmp_path / "curves.db"
    validator, client = gated(store=str(path), model="edsr", dataset="div2k-val", scale=4)
    answer = dict(
        results=[
            {"scores": {"psnr": 31.5, "ssim": 0.9}},
            {"error": {"status": 422, "detail": [{"loc": ["sr", 1], "msg": "not an image"}]}},
            {"scores": {"psnr": 29.0, "ssim": 0.8}},
        ],
        mean={"psnr": 30.25, "ssim": 0.85},
        conventions=CONVENTIONS,
    )
    client.answers[0] = answer
    client.open()
    validator(500, images(0.1, batch=3), images(0.2, batch=3))
    validator.close(timeout=10)
    assert validator.result(500, timeout=10)["per_image"] == [{"psnr": 31.5, "ssim": 0.9}, None, {"psnr": 29.0, "ssim": 0.8}]
    with ResultsStore(path) as store:  # the validator closed its connection: the store opens again
        rows = sorted(store.rows(), key=lambda r: (r.image, r.metric))
    digest = conventions_hash(CONVENTIONS)
    assert [(r.image, r.metric, r.value, r.step) for r in rows] == [
        ("00000", "psnr", 31.5, 500),
        ("00000", "ssim", 0.9, 500),
        ("00002", "psnr", 29.0, 500),
        ("00002", "ssim", 0.8, 500),
    ]
    assert {(r.model, r.dataset, r.scale, r.conventions_hash, r.checkpoint) for r in rows} == {("edsr", "div2k-val", 4, digest, "")}
    assert not path.with_name(path.name + "-wal").exists()  # the validator closed the store: its log went back into it


def test_the_store_names_an_unnamed_run_model_on_validation(gated, tmp_path):
    path = tmp_path / "curves.db"
    validator, client = gated(store=str(path))
    client.open()
    validator(3, images(0.1), images(0.2))
    validator.close(timeout=10)
    with ResultsStore(path) as store:
        assert [(r.model, r.dataset, r.scale, r.image, r.step) for r in store.rows()] == [("model", "validation", 0, "00000", 3)]


def test_a_store_that_cannot_be_opened_is_logged_and_scoring_goes_on(gated, tmp_path, caplog):
    caplog.set_level(logging.ERROR, logger="loss_service.validator")
    validator, client = gated(store=str(tmp_path))  # a folder, not a database file
    client.open()
    validator(0, images(0.02), images(0.0))
    assert validator.result(0, timeout=10)["mean"]["psnr"] == pytest.approx(0.02)
    validator.close(timeout=10)
    assert [r.getMessage() for r in caplog.records] == [f"the results store {tmp_path} cannot be opened; scores are not stored"]
    assert caplog.records[0].exc_info is not None


def test_failures_raise_from_result_and_a_dead_server_is_logged_once(gated, caplog):
    caplog.set_level(logging.DEBUG, logger="loss_service.validator")
    validator, client = gated()
    refused = BadRequest("sr: not an image", status=422)
    down = [ConnectionFailed(f"no replica reachable ({n})") for n in range(3)]
    broken = ValueError("a bug")
    client.failures = [refused, down[0], down[1], refused, down[2], broken]
    client.open()
    for step in range(7):
        validator(step, images(step / 100), images(0.0))
    validator.close(timeout=10)
    for step, error in enumerate([refused, down[0], down[1], refused, down[2], broken]):
        with pytest.raises(type(error)) as raised:
            validator.result(step, timeout=10)
        assert raised.value is error
    assert validator.result(6, timeout=10)["mean"]["psnr"] == pytest.approx(0.06)  # the next step scores again
    logged = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert logged == [
        (logging.ERROR, "validation of step 0 failed (training goes on; result(0) raises it): sr: not an image"),
        (logging.ERROR, "validation of step 1 failed (training goes on; result(1) raises it): no replica reachable (0)"),
        (logging.DEBUG, "validation of step 2 failed: no replica reachable (1)"),
        (logging.ERROR, "validation of step 3 failed (training goes on; result(3) raises it): sr: not an image"),
        (logging.DEBUG, "validation of step 4 failed: no replica reachable (2)"),
        (logging.ERROR, "validation of step 5 failed"),
    ]
    assert caplog.records[-1].exc_info[1] is broken


@pytest.fixture(scope="module")
def scorer():
    from service.server.app import create_app
    from service.server.settings import Settings

    from .servers import ThreadServer

    with ThreadServer(create_app(Settings(models=""))) as srv:
        yield srv


def test_values_through_a_server_equal_the_library(scorer):
    g = torch.Generator().manual_seed(5)
    gt = torch.rand(3, 3, 24, 20, generator=g)
    sr = (gt + 0.05 * torch.randn(3, 3, 24, 20, generator=g)).clamp(0, 1)
    with Validator(scorer.url, "psnr,ssim", crop_border=2) as validator:
        validator(0, sr, gt)
        result = validator.result(0, timeout=60)
    expected = losses.score(sr, gt, metrics=["psnr", "ssim"], crop_border=2)
    for name, values in expected.items():
        assert [image[name] for image in result["per_image"]] == pytest.approx(values.tolist(), rel=1e-6, abs=1e-9)
        assert result["mean"][name] == pytest.approx(values.mean().item(), rel=1e-9)
    assert {name: result["conventions"]["metrics"][name]["options"]["crop_border"] for name in expected} == {"psnr": 2, "ssim": 2}


def test_eight_bit_through_a_server_equals_the_library_on_rounded_images(scorer):
    g = torch.Generator().manual_seed(6)
    gt = torch.rand(2, 3, 16, 16, generator=g)
    sr = (gt + 0.03 * torch.randn(2, 3, 16, 16, generator=g)).clamp(0, 1)
    with Validator(scorer.url, "psnr", eight_bit=True) as validator:
        validator(0, sr, gt)
        per_image = validator.result(0, timeout=60)["per_image"]
    rounded = [(t * 255).round() / 255 for t in (sr, gt)]
    expected = losses.score(*rounded, metrics=["psnr"])["psnr"]
    assert [image["psnr"] for image in per_image] == pytest.approx(expected.tolist(), rel=1e-6)
