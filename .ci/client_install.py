"""The install boundary, checked on real installs: the wheel goes into two fresh virtual
environments, bare (``loss-service``) and with ``[report]``. In each, ``eval`` scores two models
against a server started from the development environment, then ``report`` writes HTML (with the
worst-image gallery), Markdown and LaTeX, and no server-side package may have been imported.
A bare install's ``report`` and every server command must say which extra to install, in one
line, with exit 2.

Run from the repository root: ``uv run python .ci/client_install.py``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
NEVER = ("torch", "torchvision", "timm", "fastapi", "uvicorn", "imagecodecs")
NOT_IN_BARE = ("scipy", "matplotlib")
SERVER_COMMANDS = (
    ["serve"],
    ["weights", "list"],
    ["weights", "fetch"],
    ["bench", "--quick"],
    ["score", "--local", "x.png", "x.png"],
    ["eval", "--sr", ".", "--gt", ".", "--metrics", "psnr"],  # without --url: scored in-process, the server extra's job
)
# Runs a command of the installed CLI, then writes the top-level modules it imported to a file.
TRACED_CLI = """
import json, sys
from service.cli import main
argv, out = sys.argv[2:], sys.argv[1]
try:
    code = main(argv)
finally:
    with open(out, "w") as handle:
        json.dump(sorted({name.split(".")[0] for name in sys.modules}), handle)
sys.exit(code)
"""


def run(*command, shown=None, **kwargs) -> subprocess.CompletedProcess:
    print("+", shown or " ".join(map(str, command)), flush=True)
    return subprocess.run(command, text=True, capture_output=True, **kwargs)


def check(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    if result.returncode != 0:
        sys.exit(f"failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_dataset(root: Path) -> dict[str, Path]:
    """Four GT photos-like images and two models' outputs of them (noisier and less noisy)."""
    rng = np.random.default_rng(0)
    folders = {name: root / name for name in ("gt", "noisy", "clean")}
    for folder in folders.values():
        folder.mkdir()
    for index in range(4):
        gt = rng.integers(0, 256, (48, 64, 3)).astype(np.float64)
        for name, sigma in (("gt", 0), ("noisy", 20), ("clean", 5)):
            pixels = np.clip(gt + rng.normal(0, sigma, gt.shape), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folders[name] / f"{index:04d}.png")
    return folders


def start_server(port: int, log: Path) -> subprocess.Popen:
    command = [
        "uv",
        "run",
        "loss-service",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--models",
        "vgg16,inception_v3_fid",
        "--random-weights",
    ]
    server = subprocess.Popen(command, cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit(f"the server exited with {server.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as answer:
                if json.load(answer).get("ready"):
                    return server
        except OSError:
            pass
        time.sleep(0.5)
    server.kill()
    sys.exit(f"the server was not ready within 300 s:\n{log.read_text()}")


def traced(python: Path, work: Path, *argv: str) -> tuple[subprocess.CompletedProcess, set[str]]:
    modules_file = work / "modules.json"
    result = run(
        str(python),
        "-c",
        TRACED_CLI,
        str(modules_file),
        *argv,
        cwd=work,
        shown=f"{python.parent.parent.name}: loss-service {' '.join(argv)}",
    )
    return result, set(json.loads(modules_file.read_text())) if modules_file.exists() else set()


def check_install(extra: str, wheel: Path, url: str, data: dict[str, Path], work: Path) -> None:
    venv = work / f"venv{extra or '-bare'}"
    check(run("uv", "venv", "--python", sys.executable, str(venv)))
    python = venv / "bin" / "python"
    check(run("uv", "pip", "install", "--python", str(python), f"{wheel}{extra}"))
    forbidden = set(NEVER) | (set() if extra else set(NOT_IN_BARE))
    results = work / f"results{extra or '-bare'}.json"
    result, imported = traced(
        python,
        work,
        "eval",
        "--url",
        url,
        "--sr",
        f"noisy={data['noisy']}",
        "--sr",
        f"clean={data['clean']}",
        "--gt",
        str(data["gt"]),
        "--metrics",
        "psnr,ssim,fid,kid",
        "--options",
        '{"subset_size": 4}',
        "--feature-cache",
        str(work / "features"),
        "--dataset",
        "tiny",
        "--scale",
        "1",
        "--out",
        str(work / "results.csv"),
        "--json",
        str(results),
        "--quiet",
    )
    check(result)
    assert not imported & forbidden, f"eval imported {sorted(imported & forbidden)}"
    sets = json.loads(results.read_text())["models"]["noisy"]["dataset_metrics"]
    assert set(sets["values"]) == {"fid", "kid", "kid.std"}, sets
    report = [
        "report",
        str(results),
        "--html",
        str(work / "r.html"),
        "--markdown",
        str(work / "r.md"),
        "--latex",
        str(work / "r.tex"),
        "--worst",
        "2",
        "--crop",
        "32",
    ]
    result, imported = traced(python, work, *report)
    assert not imported & forbidden, f"report imported {sorted(imported & forbidden)}"
    if extra:
        check(result)
        html = (work / "r.html").read_text()
        assert "data:image/png;base64," in html, "the HTML report has no gallery image"
        assert "noisy" in (work / "r.md").read_text() and "\\begin{tabular}" in (work / "r.tex").read_text()
    else:
        one_line(result, "report[report]")
    for command in SERVER_COMMANDS:
        one_line(traced(python, work, *command)[0], "loss-service[server]")
    print(f"install {'loss-service' + extra}: eval, report and the extras' messages as documented")


def one_line(result: subprocess.CompletedProcess, extra_named: str) -> None:
    """Exit 2 and one stderr line naming the extra (``report[report]``: the report extra)."""
    lines = result.stderr.strip().splitlines()
    extra = extra_named.split("[")[1].rstrip("]")
    assert result.returncode == 2, f"exit {result.returncode}, expected 2:\n{result.stderr}"
    assert len(lines) == 1 and f"loss-service[{extra}]" in lines[0], f"expected one line naming [{extra}]:\n{result.stderr}"


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        check(run("uv", "build", "--wheel", "--out-dir", str(work / "dist"), cwd=ROOT))
        (wheel,) = (work / "dist").glob("*.whl")
        data = write_dataset(work)
        port = free_port()
        server = start_server(port, work / "server.log")
        try:
            for extra in ("", "[report]"):
                check_install(extra, wheel, f"http://127.0.0.1:{port}", data, work)
        finally:
            server.terminate()
            server.wait(30)


if __name__ == "__main__":
    os.environ.pop("VIRTUAL_ENV", None)
    main()
