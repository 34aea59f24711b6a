"""Client and eval command: against a real server, stub servers for retries/timeouts, and
the torch-free import."""

import csv
import json
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from service.cli import main as cli_main
from service.client import AsyncLossClient, BadRequest, LossClient, RequestTimeout, ServerBusy
from service.client.eval.folders import pair_folders

from .servers import StubHTTPServer, metric_value, npy_bytes, random_image


@pytest.fixture(scope="module")
def server(vgg16_server):
    return vgg16_server


class Stub:
    """A tiny HTTP server on 127.0.0.1 whose answers a test scripts."""

    def __init__(self, answers=None, delay: float = 0.0):
        self.answers = list(answers or [])
        self.delay = delay
        self.hits = 0
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers.get("content-length", 0)))
                stub.hits += 1
                time.sleep(stub.delay)
                status, headers = stub.answers.pop(0) if stub.answers else (200, {})
                body = json.dumps(
                    {"scores": {"psnr": 1.0}, "warnings": []}
                    if status == 200
                    else {"detail": [{"loc": ["request"], "msg": "busy", "type": "unavailable"}]}
                ).encode()
                self.send_response(status)
                for k, v in {**headers, "content-type": "application/json", "content-length": str(len(body))}.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = StubHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_retries_honour_retry_after_then_succeed():
    stub = Stub([(503, {"Retry-After": "1"}), (503, {"Retry-After": "1"})])
    try:
        started = time.monotonic()
        result = LossClient(stub.url, backoff=0.01).score(b"x", b"y")
        assert result["scores"]["psnr"] == 1.0 and stub.hits == 3
        assert time.monotonic() - started >= 2.0  # waited as the server asked
    finally:
        stub.close()


def test_async_retries_and_giving_up():
    import asyncio

    stub = Stub([(503, {"Retry-After": "0"})] * 10)
    try:

        async def go():
            async with AsyncLossClient(stub.url, retries=2, backoff=0.01) as client:
                return await client.score(b"x", b"y")

        with pytest.raises(ServerBusy) as info:
            asyncio.run(go())
        assert info.value.status == 503 and stub.hits == 3
    finally:
        stub.close()


def test_server_that_never_answers_times_out():
    stub = Stub(delay=5.0)
    try:
        with pytest.raises(RequestTimeout):
            LossClient(stub.url, timeout=0.5).score(b"x", b"y")
    finally:
        stub.close()


def test_two_urls_both_receive_traffic():
    stubs = [Stub(delay=0.05), Stub(delay=0.05)]
    try:
        with LossClient([s.url for s in stubs]) as client:
            results = list(client.score_many([(b"x", b"y")] * 12, concurrency=4))
        assert len(results) == 12 and all(s.hits >= 3 for s in stubs), [s.hits for s in stubs]
    finally:
        for s in stubs:
            s.close()


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_a_form_goes_out_in_one_piece_and_a_retry_resends_the_same_bytes(flavour):
    """Given ``files=``, httpx streams a form field by field (~10 writes, each waking the server);
    the client encodes it once and sends one body, the same bytes on every try."""
    import asyncio

    bodies, pieces = [], []

    def answer(chunks: list[bytes]) -> httpx.Response:
        pieces.append(len(chunks))
        bodies.append(b"".join(chunks))
        if len(bodies) == 1:
            return httpx.Response(503, headers={"Retry-After": "0"}, json={"detail": []})
        return httpx.Response(200, json={"scores": {"psnr": 1.0}, "warnings": []})

    sr, gt = random_image(8, 8, 1), random_image(8, 8, 2)
    if flavour == "sync":
        with LossClient("http://scorer", backoff=0.0) as client:
            client.http = httpx.Client(transport=httpx.MockTransport(lambda request: answer(list(request.stream))))
            client.score(sr, gt, metrics="psnr", crop_border=4)
    else:

        async def handler(request):
            return answer([chunk async for chunk in request.stream])

        async def go():
            async with AsyncLossClient("http://scorer", backoff=0.0) as client:
                client.http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
                await client.score(sr, gt, metrics="psnr", crop_border=4)

        asyncio.run(go())
    assert pieces == [1, 1] and bodies[0] == bodies[1]
    for part in (b'name="sr"; filename=', b'name="gt"; filename=', b'name="metrics"\r\n\r\npsnr', b'{"crop_border": 4}'):
        assert part in bodies[0]


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_progress_counts_a_result_before_handing_it_over(monkeypatch, flavour):
    """A consumer that stops at the last item (``zip`` over a list) must see the bar at its total
    and stopped, not one short and still running until the generator is collected."""
    import asyncio

    import service.client.progress as client_module

    bars = []

    class Recorder:
        def __init__(self, enabled, total):
            self.count, self.stopped = 0, False
            bars.append(self)

        def __enter__(self):
            return lambda: setattr(self, "count", self.count + 1)

        def __exit__(self, *exc):
            self.stopped = True

    monkeypatch.setattr(client_module, "ProgressBar", Recorder)
    items = list(range(7))
    if flavour == "sync":
        outcomes = LossClient("http://127.0.0.1:9").imap(lambda x: x * 2, items, concurrency=2, progress=True)
        for i, (item, outcome) in enumerate(zip(items, outcomes, strict=True)):
            assert outcome == item * 2 and bars[0].count == i + 1
    else:

        async def scored():
            client = AsyncLossClient("http://127.0.0.1:9")

            async def score(sr, gt, lr, teacher, metrics, **options):
                return sr

            client.score = score
            seen = []
            async for outcome in client.score_many([(i, i) for i in items], concurrency=2, progress=True):
                seen.append((outcome, bars[0].count))
            return seen

        assert asyncio.run(scored()) == [(i, i + 1) for i in items]
    assert bars[0].count == len(items) and bars[0].stopped


def test_least_outstanding_replica_wins_not_round_robin():
    """A slow replica holding requests gets fewer new ones: round-robin would split 12 evenly."""
    from service.client.core import ClientCore

    core = ClientCore(["http://a", "http://b", "http://c"])
    held = [core.acquire() for _ in range(3)]  # one in flight on each
    assert sorted(held) == ["http://a", "http://b", "http://c"]
    core.release("http://b")
    core.release("http://c")
    picks = [core.acquire(), core.acquire()]  # "a" still holds one: b and c are freer
    assert sorted(picks) == ["http://b", "http://c"]
    slow, fast = Stub(delay=0.4), Stub(delay=0.0)
    try:
        with LossClient([slow.url, fast.url]) as client:
            list(client.score_many([(b"x", b"y")] * 12, concurrency=2))
        assert fast.hits >= 9 and slow.hits <= 3, (slow.hits, fast.hits)  # round-robin: 6 and 6
    finally:
        slow.close()
        fast.close()


def test_connection_errors_are_retried_on_another_replica():
    stub = Stub()
    dead = "http://127.0.0.1:9"  # discard port: nothing listens
    try:
        with LossClient([dead, stub.url], backoff=0.01) as client:
            results = list(client.score_many([(b"x", b"y")] * 4, concurrency=2))
        assert len(results) == 4 and stub.hits == 4
    finally:
        stub.close()


def test_every_image_type_gives_the_same_score(server, tmp_path):
    import torch

    gt = random_image(24, 32, 1)
    sr = random_image(24, 32, 2)
    path = tmp_path / "sr.png"
    Image.fromarray(sr).save(path)
    variants = [
        path,
        str(path),
        path.read_bytes(),
        Image.fromarray(sr),
        sr,
        sr.astype(np.float32) / 255,
        sr.astype(np.uint16) * 257,
        torch.from_numpy(sr).permute(2, 0, 1).float() / 255,
        torch.from_numpy(sr).permute(2, 0, 1),  # uint8 (C, H, W), as torchvision.io.read_image gives
        (sr.astype(np.uint16) * 257).astype(">u2"),
        torch.from_numpy(sr).permute(2, 0, 1).to(torch.bfloat16) / 255,
    ]
    with LossClient(server.url) as client:
        values = [client.score(v, gt, metrics="psnr,l1")["scores"] for v in variants]
        with pytest.raises(BadRequest) as info:
            client.score(sr, gt[:10], metrics="psnr")
        assert info.value.status == 422 and info.value.detail[0]["loc"] == ["body", "gt"]
    for v in values[1:-1]:
        assert v["psnr"] == pytest.approx(values[0]["psnr"], abs=1e-4) and v["l1"] == pytest.approx(values[0]["l1"], abs=1e-6)
    assert values[-1]["psnr"] == pytest.approx(values[0]["psnr"], abs=0.05)  # bfloat16 keeps 8 bits of mantissa


def test_distill_through_client(server):
    g = np.random.default_rng(0)
    tensors = {
        "teacher_logits": g.normal(size=(2, 5)).astype(np.float32),
        "student_logits": g.normal(size=(2, 5)).astype(np.float32),
        "labels": np.eye(5, dtype=np.float32)[:2],
    }
    with LossClient(server.url) as client:
        result = client.distill(tensors, logit_loss="soft_entropy", lambda2=0.0)
    assert result["total"] == pytest.approx(result["components"]["hard"] + result["components"]["term1"], rel=1e-6)


def make_folders(root: Path) -> dict[str, Path]:
    dirs = {role: root / role for role in ("sr", "gt", "lr")}
    for d in dirs.values():
        d.mkdir()
    for i in range(4):
        gt = random_image(32, 32, i)
        noise = np.random.default_rng(10 + i).integers(-30, 31, gt.shape)
        sr = np.clip(gt.astype(int) + noise * (i + 1) // 2, 0, 255).astype(np.uint8)
        Image.fromarray(gt).save(dirs["gt"] / f"img{i}.png")
        if i % 2:
            (dirs["sr"] / f"img{i}_x4.npy").write_bytes(npy_bytes(sr.astype(np.float32) / 255))
        else:
            Image.fromarray(sr).save(dirs["sr"] / f"img{i}_x4.png")
        Image.fromarray(gt[::4, ::4]).save(dirs["lr"] / f"img{i}x4.bmp")
    Image.fromarray(random_image(8, 8, 0)).save(dirs["gt"] / "lonely.png")  # no SR partner
    Image.fromarray(random_image(16, 16, 0)).save(dirs["sr"] / "img9_x4.png")  # wrong size → fails
    Image.fromarray(random_image(32, 32, 0)).save(dirs["gt"] / "img9.png")
    Image.fromarray(random_image(8, 8, 0)).save(dirs["lr"] / "img9x4.png")
    (dirs["gt"] / "notes.txt").write_text("not an image")
    return dirs


def test_pairing_edge_cases(tmp_path):
    dirs = make_folders(tmp_path)
    pairing = pair_folders(dirs, {"sr": "_x4", "lr": "x4"})
    assert sorted(pairing.pairs) == ["img0", "img1", "img2", "img3", "img9"]
    assert pairing.pairs["img1"]["sr"].suffix == ".npy" and pairing.pairs["img1"]["lr"].suffix == ".bmp"
    assert pairing.unpaired == {"gt": ["lonely.png"]}
    (dirs["gt"] / "img0.jpg").write_bytes((dirs["gt"] / "img0.png").read_bytes())
    assert any("img0" in a for a in pair_folders(dirs, {"sr": "_x4", "lr": "x4"}).ambiguous)
    without_suffix = pair_folders({k: dirs[k] for k in ("sr", "gt")}, {})
    assert not without_suffix.pairs and len(without_suffix.unpaired["sr"]) == 5
    for role, name in (("sr", "._img5_x4.png"), ("gt", "._img5.png"), ("gt", ".hidden.png")):  # macOS AppleDouble files
        (dirs[role] / name).write_bytes(b"\x00\x05\x16\x07" + bytes(60))
    hidden = pair_folders(dirs, {"sr": "_x4", "lr": "x4"})
    assert "._img5" not in hidden.pairs and hidden.unpaired == {"gt": ["lonely.png"]}


def test_eval_writes_what_the_server_answers_and_resumes(server, tmp_path, capsys):
    dirs = make_folders(tmp_path)
    out, report = tmp_path / "results.csv", tmp_path / "results.json"
    args = [
        "eval",
        "--url",
        server.url,
        "--sr",
        str(dirs["sr"]),
        "--gt",
        str(dirs["gt"]),
        "--lr",
        str(dirs["lr"]),
        "--sr-suffix",
        "_x4",
        "--lr-suffix",
        "x4",
        "--metrics",
        "psnr,ssim,l1",
        "--crop-border",
        "2",
        "--y-channel",
        "--out",
        str(out),
        "--json",
        str(report),
        "--quiet",
    ]
    assert cli_main(args) == 1  # img9 failed (size mismatch)
    data = json.loads(report.read_text())
    assert [r["image"] for r in data["results"]] == ["img0", "img1", "img2", "img3"]
    assert data["failures"][0]["image"] == "img9" and data["failures"][0]["status"] == 422
    assert data["server"]["pretrained"] is True and data["server"]["device"] == "cpu"
    assert data["unpaired"] == {"gt": ["lonely.png"]}
    with LossClient(server.url) as client:
        for i in range(4):
            expected = client.score(
                *(data_path(dirs, "sr", f"img{i}"), dirs["gt"] / f"img{i}.png"), metrics="psnr,ssim,l1", crop_border=2, y_channel=True
            )["scores"]
            row = next(r for r in csv.DictReader(out.open()) if r["image"] == f"img{i}")
            assert {k: float(v) for k, v in row.items() if k != "image"} == expected
            assert data["results"][i]["scores"] == expected
    summary = data["summary"]["psnr"]
    values = [r["scores"]["psnr"] for r in data["results"]]
    assert summary["mean"] == pytest.approx(np.mean(values)) and summary["min"] == min(values)
    assert summary["worst"][0]["value"] == min(values)  # psnr: higher is better, so the worst is the lowest
    printed = capsys.readouterr().err
    assert "lonely.png" in printed and "img9" in printed

    assert cli_main([a for a in args if a != "--quiet"]) == 1  # with the progress bar (on stderr)
    shown = capsys.readouterr()
    assert "scoring" not in shown.out  # stdout stays clean
    assert shown.err.index("100%") < shown.err.index("scored 4")  # the bar finished before the summary

    (dirs["sr"] / "img9_x4.png").unlink()
    Image.fromarray(random_image(32, 32, 5)).save(dirs["sr"] / "img5_x4.png")
    Image.fromarray(random_image(32, 32, 6)).save(dirs["gt"] / "img5.png")
    Image.fromarray(random_image(8, 8, 6)).save(dirs["lr"] / "img5x4.png")
    before = metric_value(httpx.get(f"{server.url}/metrics").text, "loss_service_requests_total", 'endpoint="/v1/score/batch"')
    assert cli_main(args + ["--resume"]) == 0
    after = metric_value(httpx.get(f"{server.url}/metrics").text, "loss_service_requests_total", 'endpoint="/v1/score/batch"')
    assert after - before == 1  # only img5 was scored
    assert [r["image"] for r in json.loads(report.read_text())["results"]] == ["img0", "img1", "img2", "img3", "img5"]


def data_path(dirs, role, stem):
    return next(dirs[role].glob(f"{stem}_x4.*"))


def test_score_command(server, tmp_path, capsys):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    Image.fromarray(random_image(20, 20, 1)).save(a)
    Image.fromarray(random_image(20, 20, 2)).save(b)
    assert cli_main(["score", str(a), str(b), "--url", server.url, "--metrics", "psnr,perceptual", "--json"]) == 0
    remote = json.loads(capsys.readouterr().out)
    assert cli_main(["score", str(a), str(b), "--local", "--metrics", "psnr,perceptual", "--json"]) == 0
    local = json.loads(capsys.readouterr().out)
    assert local["scores"] == pytest.approx(remote["scores"], rel=1e-5)
    assert (
        local["conventions"]["metrics"] == remote["conventions"]["metrics"]
        and local["conventions"]["weights"] == remote["conventions"]["weights"]
    )


def test_score_command_answers_as_the_server_does(server, tmp_path, capsys):
    """``score --local`` of identical images prints valid JSON (null, not Infinity) with the
    server's warnings; with random weights it says so in every output, as the server does."""
    a, rgba, lr = tmp_path / "a.png", tmp_path / "rgba.png", tmp_path / "lr.png"
    Image.fromarray(random_image(20, 20, 1)).save(a)
    Image.fromarray(np.dstack([random_image(20, 20, 1), np.full((20, 20), 255, np.uint8)])).save(rgba)
    Image.fromarray(random_image(5, 5, 2)).save(lr)
    outputs = {}
    for where in (["--url", server.url], ["--local"]):
        assert cli_main(["score", str(a), str(rgba), str(lr), *where, "--metrics", "psnr,perceptual", "--json"]) == 0
        outputs[where[0]] = json.loads(capsys.readouterr().out)  # json.loads accepts Infinity: check the text too
    remote, local = outputs["--url"], outputs["--local"]
    assert local["scores"]["psnr"] is None and remote["scores"]["psnr"] is None
    assert local["scores"]["perceptual"] == pytest.approx(remote["scores"]["perceptual"], abs=1e-7)
    assert local["warnings"] == remote["warnings"]
    assert "gt: alpha channel dropped" in local["warnings"] and any("reported as null" in w for w in local["warnings"])
    # An upload no requested metric reads was dropped without a word.
    assert "lr: uploaded but not used by psnr, perceptual; metrics that use it: clp_dinov2, clp_vgg19, lr_psnr" in local["warnings"]
    assert cli_main(["score", str(a), str(a), "--local", "--random-weights", "--metrics", "psnr,perceptual", "--json"]) == 0
    printed = capsys.readouterr().out
    assert "Infinity" not in printed and json.loads(printed)["pretrained"] is False
    assert "random backbone weights (--random-weights): scores are not comparable" in json.loads(printed)["warnings"]
    assert cli_main(["score", str(a), str(a), "--local", "--random-weights", "--metrics", "psnr,perceptual"]) == 0
    printed = capsys.readouterr()
    assert "psnr        null" in printed.out and "random backbone weights" in printed.err


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["{a}", "{missing}", "--local", "--metrics", "psnr"], 2, "missing.png: No such file or directory"),
        (["{a}", "{missing}", "--url", "{url}"], 2, "missing.png: No such file or directory"),
        (["{a}", "{a}", "--local", "--metrics", "psnr", "--options", '{{"crop_border": 40}}'], 2, "largest valid crop_border is 9"),
        (["{a}", "{a}", "--url", "{url}", "--metrics", "psnr", "--options", '{{"crop_border": 40}}'], 2, "largest valid crop_border is 9"),
        (["{a}", "{a}", "--local", "--metrics", "nope"], 2, "unknown metric(s) ['nope']"),
        (["{a}", "{a}", "--local", "--metrics", "psnr", "--options", '{{"device": "cuda"}}'], 2, "['device'] are flags of their own"),
        (["{a}", "{a}", "--local", "--metrics", "psnr", "--options", '{{"bogus": 1}}'], 2, "unknown option(s) ['bogus']"),
        (["{a}", "{a}", "--local", "--metrics", "perceptual", "--weights-dir", "{tmp}"], 1, "weights for 'vgg16' not found"),
        (["{a}", "{a}", "--url", "http://127.0.0.1:9", "--metrics", "psnr"], 1, "Connection refused"),
    ],
)
def test_score_command_failures_are_one_line_and_an_exit_code(server, tmp_path, capsys, monkeypatch, args, code, message):
    monkeypatch.delenv("LOSS_SERVICE_WEIGHTS_DIR", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr("service.client.core.ClientCore.retry_delay", lambda self, attempt, response: None)  # no retries
    a = tmp_path / "a.png"
    Image.fromarray(random_image(20, 20, 1)).save(a)
    filled = [arg.format(a=a, missing=tmp_path / "missing.png", url=server.url, tmp=tmp_path) for arg in args]
    assert cli_main(["score", *filled]) == code
    err = capsys.readouterr().err
    assert err.startswith("loss-service score: error: ") and message in err and "Traceback" not in err


@pytest.mark.parametrize("options", ["{crop_border: 4}", "[4]", '{"crop_border": 4, "crop_border": 0}'])
def test_options_that_are_not_a_json_object_are_refused_by_the_parser(options, capsys):
    with pytest.raises(SystemExit) as info:
        cli_main(["score", "a.png", "b.png", "--local", "--options", options])
    assert info.value.code == 2 and "argument --options:" in capsys.readouterr().err


EVAL = ["eval", "--url", "http://127.0.0.1:9", "--sr", "sr", "--gt", "gt"]
REPORT = ["report", "results.json", "--html", "report.html"]


@pytest.mark.parametrize(
    "args, flag",
    [
        (EVAL + ["--concurrency", "0"], "--concurrency"),  # was a ValueError from the thread pool mid-run
        (EVAL + ["--timeout", "0"], "--timeout"),
        (EVAL + ["--timeout", "nan"], "--timeout"),
        (EVAL + ["--crop-border", "-1"], "--crop-border"),  # was a 422 for every image
        (EVAL + ["--scale", "0"], "--scale"),
        (REPORT + ["--seed", "-1"], "--seed"),  # was NumPy's ValueError after loading every file
        (REPORT + ["--resamples", "0"], "--resamples"),
        (REPORT + ["--worst", "-2"], "--worst"),
        (REPORT + ["--crop", "0"], "--crop"),
        (REPORT + ["--crop", "12.5"], "--crop"),
    ],
)
def test_out_of_range_command_flags_are_usage_errors(args, flag, capsys):
    with pytest.raises(SystemExit) as info:
        cli_main(args)
    assert info.value.code == 2 and f"argument {flag}:" in capsys.readouterr().err


@pytest.mark.parametrize("mode", ["CMYK", "YCbCr", "LAB", "HSV", "I", "F"])
def test_a_pillow_image_in_any_mode_is_sent_as_the_server_reads_it(mode):
    """PNG cannot hold these modes: the client raised Pillow's "cannot write mode CMYK as PNG".
    They go as TIFF (HSV, which TIFF cannot hold either, as RGB), and decode to what the server
    makes of the same picture: Pillow's RGB conversion, or the grey values of I and F."""
    from service.client import encode_image
    from service.common.decode import decode

    pixels = random_image(9, 7, 4)
    if mode in ("I", "F"):
        image = Image.fromarray(pixels[..., 0].astype(np.int32) if mode == "I" else pixels[..., 0].astype(np.float32) / 255)
        expected = np.repeat(pixels[..., :1], 3, axis=2).astype(np.float32) / 255
    else:
        image = Image.fromarray(pixels).convert(mode)
        expected = np.asarray(image.convert("RGB")).astype(np.float32) / 255
    _, data, _ = encode_image(image, "sr")
    decoded = decode(data, "sr")
    assert decoded.warnings == [] and np.abs(decoded.pixels - expected).max() <= 1e-7


@pytest.mark.parametrize(
    "make, message",
    [
        (
            lambda: np.zeros((3, 32, 32), np.uint8),  # was pypng's "Expected 96 values but got 1024 values, in row 0"
            "sr: arrays are H×W or H×W×C with C in 1..4, got shape (3, 32, 32); channels first? pass np.moveaxis(a, 0, -1)",
        ),
        (lambda: np.zeros((32, 32, 5), np.uint8), "sr: arrays are H×W or H×W×C with C in 1..4, got shape (32, 32, 5)"),
        (lambda: np.zeros((2, 32, 32, 3), np.float32), "sr: arrays are H×W or H×W×C with C in 1..4, got shape (2, 32, 32, 3)"),
        (
            lambda: __import__("torch").zeros(32, 32, 3),  # was sent as a 32×3 image of 32 channels
            "sr: tensors are (C, H, W) with C in 1..4, got shape (32, 32, 3); for an (H, W, C) tensor pass t.permute(2, 0, 1)",
        ),
        (lambda: __import__("torch").zeros(2, 3, 32, 32), "sr: pass one image per field, got a batch of 2"),
    ],
)
def test_array_shapes_are_checked_before_sending(make, message):
    from service.client import encode_image

    with pytest.raises(ValueError) as caught:
        encode_image(make(), "sr")
    assert str(caught.value) == message


def test_an_array_batch_of_one_is_its_image():
    from service.client import encode_image
    from service.common.decode import decode

    pixels = random_image(12, 10, 5)
    assert np.array_equal(decode(encode_image(pixels[None], "sr")[1], "sr").pixels, decode(encode_image(pixels, "sr")[1], "sr").pixels)


def test_client_imports_without_torch_or_fastapi():
    blocker = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'fastapi', 'torchvision', 'timm', 'uvicorn', 'pydantic_settings',\n"
        "                                   'prometheus_client', 'lpips'):\n"
        "            raise ImportError('blocked ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from service.client import LossClient, AsyncLossClient\n"
        "import service, service.client.eval.images, service.client.eval.clips, service.cli\n"
        "service.cli.build_parser().parse_args(['serve'])\n"
        "service.cli.build_parser().parse_args(['eval', '--url', 'http://x', '--sr', 'a', '--gt', 'b'])\n"
        "import numpy as np\n"
        "from service.client import encode_image\n"
        "encode_image(np.zeros((4, 4, 3), np.uint16), 'sr')\n"
        "assert 'torch' not in sys.modules and 'fastapi' not in sys.modules\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", blocker], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_eval_summary_cuts_no_number_short_on_an_80_column_console():
    """Long metric names, small values and DIV2K-style names: every mean, min and max printed
    in full, every worst image listed (a single wide table cut them to '0.0005159…')."""
    import io

    from rich.console import Console

    from service.client.eval.folders import Pairing
    from service.client.eval.images import summarise
    from service.client.eval.output import print_model_summary

    rng = np.random.default_rng(0)
    names = ("clp_dinov2", "dists", "hybrid.perceptual", "lpips_alex", "lr_psnr", "ms_ssim")
    rows = [dict(image=f"{801 + i:04d}x4_realesrgan", scores={n: float(rng.random() * 1e-3) for n in names}) for i in range(6)]
    summary = summarise(rows, {n: True for n in names})
    out = io.StringIO()
    print_model_summary("realesrgan_x4plus", summary, [], Pairing(), Console(file=out, width=80))
    printed = out.getvalue()
    assert "…" not in printed
    for s in summary.values():
        assert all(f"{s[k]:.6g}" in printed for k in ("mean", "min", "max"))
        assert all(f"{w['image']}={w['value']:.4g}" in printed for w in s["worst"])


def test_eval_compares_models_in_one_pass_and_feeds_report(server, tmp_path):
    """Two models against one GT folder: one /v1/score/batch per GT image (the GT sent once),
    per-model per-image scores equal to single requests, conventions recorded, and `report`
    builds from the JSON."""
    dirs = make_folders(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    for i in range(4):
        gt = np.asarray(Image.open(dirs["gt"] / f"img{i}.png"))
        Image.fromarray(np.clip(gt.astype(int) + 3, 0, 255).astype(np.uint8)).save(other / f"img{i}_x4.png")
    out, results = tmp_path / "models.csv", tmp_path / "models.json"
    args = [
        "eval",
        "--url",
        server.url,
        "--sr",
        f"A={dirs['sr']}",
        "--sr",
        f"B={other}",
        "--gt",
        str(dirs["gt"]),
        "--sr-suffix",
        "_x4",
        "--metrics",
        "psnr,ssim,perceptual",
        "--dataset",
        "Set5",
        "--scale",
        "4",
        "--out",
        str(out),
        "--json",
        str(results),
        "--quiet",
    ]
    before = metric_value(httpx.get(f"{server.url}/metrics").text, "loss_service_requests_total", 'endpoint="/v1/score/batch"')
    assert cli_main(args) == 1  # A's img9 has the wrong size; B has no img9
    after = metric_value(httpx.get(f"{server.url}/metrics").text, "loss_service_requests_total", 'endpoint="/v1/score/batch"')
    assert after - before == 5  # img0–img3 and img9: one request per GT image, both models in it
    data = json.loads(results.read_text())
    assert (data["dataset"], data["scale"], data["metrics"]) == ("Set5", 4, ["psnr", "ssim", "perceptual"])
    assert data["lower_is_better"] == dict(psnr=False, ssim=False, perceptual=True)
    assert set(data["models"]) == {"A", "B"} and "results" not in data  # the one-model keys only for one model
    assert [f["image"] for f in data["models"]["A"]["failures"]] == ["img9"] and not data["models"]["B"]["failures"]
    conventions = data["conventions"]
    assert conventions["pretrained"] is True and conventions["device"] == "cpu" and conventions["precision"] == "fp32"
    assert conventions["metrics"]["psnr"]["options"] == dict(crop_border=0, y_channel=False)
    assert len(conventions["weights"]["vgg16"]["sha256"]) == 64 and "BT.601" in conventions["pixels"]["y_channel"]
    with LossClient(server.url) as client:
        for model, folder in (("A", dirs["sr"]), ("B", other)):
            for row in data["models"][model]["results"]:
                sr = next(folder.glob(f"{row['image']}_x4.*"))
                expected = client.score(sr, dirs["gt"] / f"{row['image']}.png", metrics="psnr,ssim,perceptual")["scores"]
                assert row["scores"]["psnr"] == expected["psnr"] and row["scores"]["ssim"] == expected["ssim"]
                assert row["scores"]["perceptual"] == pytest.approx(expected["perceptual"], rel=1e-5)
                assert row["paths"]["sr"] == str(sr.resolve())
    rows = list(csv.DictReader(out.open()))
    assert {(r["model"], r["image"]) for r in rows} == {(m, f"img{i}") for m in "AB" for i in range(4)}
    html = tmp_path / "report.html"
    assert cli_main(["report", str(results), "--html", str(html), "--x", "psnr", "--y", "perceptual", "--worst", "1"]) == 0
    page = html.read_text()
    assert "Set5 ×4" in page and "A vs B" in page and page.count('<div class="entry">') == 3 * 2


def test_backoff_is_exponential_jittered_capped_and_honours_retry_after():
    """README: 503s and connection errors are retried with jittered exponential backoff,
    honouring Retry-After, up to ``retries`` times."""
    from service.client.core import ClientCore

    core = ClientCore("http://x", retries=4, backoff=0.2, max_backoff=1.0)
    for attempt, base in enumerate((0.2, 0.4, 0.8, 1.0)):  # doubling, capped at max_backoff
        delays = [core.retry_delay(attempt, None) for _ in range(400)]
        assert all(0.5 * base <= d <= 1.5 * base for d in delays)  # jitter: ×[0.5, 1.5)
        assert max(delays) - min(delays) > 0.5 * base  # actually spread, not a constant
    assert core.retry_delay(4, None) is None  # retries exhausted
    busy = httpx.Response(503, headers={"Retry-After": "3"})
    assert all(core.retry_delay(0, busy) == 3.0 for _ in range(20))  # the server's wait wins when longer
    assert 0.1 <= core.retry_delay(0, httpx.Response(503, headers={"Retry-After": "soon"})) < 0.3  # unparsable: ignored


def test_eval_without_url_scores_in_process_bit_for_bit_as_a_server(server, weights_dir, tmp_path):
    """No --url: the server's own steps run in this process on a loopback port for the run; every
    value equals the remote server's exactly, and the JSON says which backend scored it. One request
    at a time on both sides, so both batch alike: under concurrent load the batch a request shares
    is a matter of timing, and a float32 network's last bits follow the batch size."""
    dirs = make_folders(tmp_path)
    runs = {}
    for backend, where in (("server", ["--url", server.url]), ("in-process", ["--weights-dir", str(weights_dir)])):
        out = tmp_path / f"{backend}.json"
        argv = ["eval", *where, "--sr", str(dirs["sr"]), "--gt", str(dirs["gt"]), "--sr-suffix", "_x4", "--metrics", "psnr,ssim,perceptual"]
        argv += ["--concurrency", "1"]
        cli_main([*argv, "--out", str(tmp_path / f"{backend}.csv"), "--json", str(out), "--quiet"])
        runs[backend] = json.loads(out.read_text())
    remote, local = runs["server"], runs["in-process"]
    assert remote["server"]["backend"] == "server" and local["server"]["backend"] == "in-process"
    assert local["server"]["url"][0].startswith("http://127.0.0.1:")
    scores = [{r["image"]: r["scores"] for r in run["results"]} for run in (remote, local)]
    assert scores[0] == scores[1] and len(scores[0]) == 4  # exactly equal floats, every image
    undated = [{k: v for k, v in run["conventions"].items() if k != "date"} for run in (remote, local)]
    assert undated[0] == undated[1]
