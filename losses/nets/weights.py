"""Pretrained weights: where they are looked for, how they are verified and loaded.

Every file any metric reads is one ``WeightSpec`` in ``WEIGHT_FILES``, all declared in
losses/nets/weight_files.py, so the table is complete once this module is imported. ``weights list``
and ``weights fetch`` read it.

Resolution order (README, "Weights"): an explicit directory or ``$LOSS_SERVICE_WEIGHTS_DIR`` →
``$TORCH_HOME/hub/checkpoints`` and the Hugging Face cache → the copy a Python package ships (the
``lpips`` and ``dists-pytorch`` packages' files) → a download, only when asked for (``loss-service
weights fetch``, ``serve`` without ``--offline``, or ``LOSS_SERVICE_AUTO_DOWNLOAD=1``). Files are
read with ``torch.load(weights_only=True)`` or safetensors, never with pickle.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import hashlib
import importlib.util
import logging
import os
from pathlib import Path

import torch

from losses.nets.weight_files import WEIGHT_FILES, WeightSpec, register_weights  # noqa: F401 - the table, re-exported

FETCH_COMMAND = "uv run loss-service weights fetch"
log = logging.getLogger("loss_service")


class WeightsError(RuntimeError):
    """Base class of weight problems; the message says what to do."""


class WeightsNotFoundError(WeightsError, FileNotFoundError):
    def __init__(self, spec: WeightSpec, searched: list[Path]):
        self.spec = spec
        self.searched = searched
        places = "\n  ".join(str(p) for p in searched) or "(no directory configured)"
        super().__init__(
            f"weights for {spec.name!r} not found: looked for {' or '.join(spec.filenames)} in\n  {places}\n"
            f"Fetch them with `{FETCH_COMMAND} --models {spec.name}` (set LOSS_SERVICE_WEIGHTS_DIR to choose "
            f"the directory), or opt in to random weights explicitly (pretrained=False / --random-weights)."
        )


class ChecksumError(WeightsError):
    pass


def verify_enabled() -> bool:
    return os.environ.get("LOSS_SERVICE_VERIFY_WEIGHTS", "1") not in ("0", "false", "no")


def default_weights_dir() -> Path:
    """Where ``weights fetch`` writes: the configured directory, else torch's hub cache."""
    configured = os.environ.get("LOSS_SERVICE_WEIGHTS_DIR")
    return Path(configured) if configured else Path(torch.hub.get_dir()) / "checkpoints"


def _huggingface_dirs(spec: WeightSpec) -> list[Path]:
    if spec.hf_repo is None:
        return []
    hub = os.environ.get("HF_HUB_CACHE") or os.path.join(
        os.environ.get("HF_HOME", os.path.join(Path.home(), ".cache", "huggingface")), "hub"
    )
    repo_dir = Path(hub) / ("models--" + spec.hf_repo.replace("/", "--")) / "snapshots"
    return sorted(repo_dir.glob("*"), reverse=True) if repo_dir.is_dir() else [repo_dir]


# The weights directory of the scoring call in progress (``score(weights_dir=...)``, the server's
# ``--weights-dir``), for the files a metric loads beside its backbone (LPIPS heads, DISTS α/β).
_scoped_dir: contextvars.ContextVar[str | None] = contextvars.ContextVar("weights_dir", default=None)


@contextlib.contextmanager
def weights_dir_scope(weights_dir: str | Path | None):
    """Within the block, ``weights_dir`` is the directory searched first when none is given."""
    token = _scoped_dir.set(str(weights_dir) if weights_dir else None)
    try:
        yield
    finally:
        _scoped_dir.reset(token)


def explicit_dir(weights_dir: str | Path | None = None) -> str | None:
    """The directory searched first: the argument, the scoped one, or ``$LOSS_SERVICE_WEIGHTS_DIR``."""
    return str(weights_dir) if weights_dir else _scoped_dir.get() or os.environ.get("LOSS_SERVICE_WEIGHTS_DIR") or None


def search_dirs(spec: WeightSpec, weights_dir: str | Path | None = None) -> list[Path]:
    """Directories searched for ``spec``, in resolution order."""
    dirs: list[Path] = []
    explicit = explicit_dir(weights_dir)
    if explicit:
        dirs.append(Path(explicit))
    dirs.append(Path(torch.hub.get_dir()) / "checkpoints")
    dirs.extend(_huggingface_dirs(spec))
    return dirs


def bundled_path(spec: WeightSpec) -> Path | None:
    """The copy of ``spec`` a Python package ships (searched after every directory), if installed."""
    if spec.bundled is None:
        return None
    package, inside = spec.bundled
    found = importlib.util.find_spec(package)
    return Path(found.origin).parent / inside if found is not None and found.origin else None


def find_weights(spec: WeightSpec, weights_dir: str | Path | None = None) -> Path | None:
    for directory in search_dirs(spec, weights_dir):
        names = spec.filenames + ((spec.hf_filename,) if "snapshots" in directory.parts else ())
        for name in names:
            candidate = directory / name
            if candidate.is_file():
                return candidate
    bundled = bundled_path(spec)
    return bundled if bundled is not None and bundled.is_file() else None


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@functools.lru_cache(maxsize=64)
def _sha256_once(path: str, size: int, mtime_ns: int) -> str:
    return sha256_of(Path(path))


def file_sha256(path: Path) -> str:
    """The file's full sha256, hashed once per unchanged file and process (verification and the
    conventions record both ask)."""
    stat = path.stat()
    return _sha256_once(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


def checksum_status(spec: WeightSpec, path: Path) -> str:
    """``ok``, ``mismatch`` or ``no-reference`` (no hash is published for this file name)."""
    prefix = spec.sha256_prefix
    if prefix is None or (spec.sha256 is None and path.name != spec.filenames[0]):
        return "no-reference"
    return "ok" if file_sha256(path).startswith(prefix) else "mismatch"


def verify(spec: WeightSpec, path: Path) -> None:
    """Raise ChecksumError on a hash mismatch (``file_sha256`` hashes each unchanged file once)."""
    if verify_enabled() and checksum_status(spec, path) == "mismatch":
        raise ChecksumError(
            f"{path}: sha256 does not start with {spec.sha256_prefix} (the published hash); "
            f"the file is corrupt or not the official one. Delete it and run `{FETCH_COMMAND} --models {spec.name}`."
        )


def offline() -> bool:
    """Downloads forbidden: ``LOSS_SERVICE_OFFLINE=1`` (``serve --offline``) or ``HF_HUB_OFFLINE=1``."""
    return any(os.environ.get(name, "").lower() in ("1", "true", "yes") for name in ("LOSS_SERVICE_OFFLINE", "HF_HUB_OFFLINE"))


def source_url(spec: WeightSpec) -> str:
    """``spec.url``, or the same file name under ``$LOSS_SERVICE_WEIGHTS_BASE_URL`` (a mirror)."""
    base = os.environ.get("LOSS_SERVICE_WEIGHTS_BASE_URL")
    return f"{base.rstrip('/')}/{spec.filenames[0]}" if base else spec.url


def download(spec: WeightSpec, target_dir: str | Path | None = None, progress: bool = True) -> Path:
    """Download ``spec`` into ``target_dir``: streamed to a ``.partial`` file, checked against the
    announced length and the published hash prefix, then renamed. A failed or truncated
    download leaves no file behind, so a broken checkpoint is never loaded."""
    import httpx

    if offline():
        raise WeightsError(f"{spec.name}: weights missing and downloads are off (--offline / LOSS_SERVICE_OFFLINE / HF_HUB_OFFLINE)")
    target_dir = Path(target_dir) if target_dir else default_weights_dir()
    target_dir.mkdir(parents=True, exist_ok=True)
    destination = target_dir / spec.filenames[0]
    partial = destination.with_name(destination.name + ".partial")
    url = source_url(spec)
    try:
        with httpx.stream("GET", url, follow_redirects=True, timeout=60) as response:
            response.raise_for_status()
            expected = int(response.headers["content-length"]) if "content-length" in response.headers else None
            log.info(
                "fetching %s: %s (%s) from %s",
                spec.name,
                destination.name,
                f"{expected / 2**20:.1f} MiB" if expected else "size unknown",
                url,
            )
            digest, received = hashlib.sha256(), 0
            with open(partial, "wb") as handle, _progress(progress, destination.name, expected) as advance:
                try:
                    for chunk in response.iter_bytes():  # as received, so a cut body counts what came
                        handle.write(chunk)
                        digest.update(chunk)
                        received += len(chunk)
                        advance(len(chunk))
                except httpx.RemoteProtocolError:  # the connection closed before Content-Length bytes came
                    if expected is None:
                        raise
        if expected is not None and received != expected:
            raise WeightsError(f"{spec.name}: download from {url} truncated ({received} of {expected} bytes)")
        if verify_enabled() and spec.sha256_prefix and not digest.hexdigest().startswith(spec.sha256_prefix):
            raise ChecksumError(f"{spec.name}: the file from {url} has sha256 {digest.hexdigest()[:12]}…, not {spec.sha256_prefix}…")
        partial.replace(destination)
    except httpx.HTTPError as exc:
        raise WeightsError(
            f"{spec.name}: download from {url} failed ({exc}); fetch it elsewhere and put "
            f"{destination.name} in {target_dir}, or set LOSS_SERVICE_WEIGHTS_BASE_URL to a mirror"
        ) from exc
    finally:
        partial.unlink(missing_ok=True)
    log.info("fetched %s: %s (%d bytes, %s)", spec.name, destination, received, checksum_status(spec, destination))
    return destination


class _progress:
    """A rich progress bar for one download, as a context manager yielding ``advance(n)``."""

    def __init__(self, enabled: bool, name: str, total: int | None):
        self.enabled, self.name, self.total = enabled, name, total

    def __enter__(self):
        if not self.enabled:
            return lambda n: None
        from rich.progress import DownloadColumn, Progress, TransferSpeedColumn

        self.bar = Progress(*Progress.get_default_columns(), DownloadColumn(), TransferSpeedColumn(), transient=True)
        self.bar.start()
        task = self.bar.add_task(self.name, total=self.total)
        return lambda n: self.bar.advance(task, n)

    def __exit__(self, *exc):
        if self.enabled:
            self.bar.stop()


def ensure(spec: WeightSpec, weights_dir: str | Path | None = None) -> Path:
    """The checkpoint's path, fetching it first when it is missing and downloads are allowed."""
    return find_weights(spec, weights_dir) or download(spec, weights_dir)


def resolve(spec: WeightSpec, weights_dir: str | Path | None = None) -> Path:
    """Find (or, with ``LOSS_SERVICE_AUTO_DOWNLOAD=1``, download) and verify ``spec``'s file."""
    path = find_weights(spec, weights_dir)
    if path is None and os.environ.get("LOSS_SERVICE_AUTO_DOWNLOAD") == "1":
        path = download(spec, weights_dir)
    if path is None:
        raise WeightsNotFoundError(spec, search_dirs(spec, weights_dir))
    verify(spec, path)
    return path


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint without unpickling arbitrary objects: safetensors, NumPy's ``.npz``, a state dict through
    ``torch.load(weights_only=True)``, or a TorchScript archive (OpenAI's CLIP ``RN50.pt``),
    whose tensors TorchScript's own loader reads (it runs no Python pickle of the file)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    if path.suffix == ".npz":  # the arrays of a JAX checkpoint (MUSIQ's), never pickled objects
        import numpy as np

        try:
            with np.load(path, allow_pickle=False) as arrays:
                return {name: torch.from_numpy(arrays[name]) for name in arrays.files}
        except ValueError as exc:  # an object array (pickled) or not an .npz at all
            raise WeightsError(f"{path}: not a NumPy .npz of plain arrays ({exc})") from exc
    if is_torchscript_archive(path):
        return dict(torch.jit.load(str(path), map_location="cpu").state_dict())
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise WeightsError(f"{path}: expected a state dict, found {type(state).__name__}")
    return state


def is_torchscript_archive(path: Path) -> bool:
    """A ``torch.jit.save`` zip: it holds ``constants.pkl`` beside ``data.pkl``."""
    import zipfile

    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/constants.pkl") for name in archive.namelist())
