"""The real loader on generated checkpoints in the real formats; errors and verification."""

import dataclasses
import hashlib
import http.server
import io
import os
import threading

import pytest
import torch

from losses import WeightsNotFoundError, get_backbone
from losses.nets import weights as W
from losses.nets.backbones import BACKBONES, build_backbone

from .conftest import generated_dinov2_official_state, generated_vgg_state
from .servers import StubHTTPServer


def test_features_only_checkpoint_loads(weights_dir):
    model = build_backbone("vgg16", pretrained=True, weights_dir=weights_dir)
    expected = generated_vgg_state("vgg16")
    assert model.pretrained
    for key, value in model.features.state_dict().items():
        assert torch.equal(value, expected[f"features.{key}"])
    assert not hasattr(model, "classifier")


def test_full_checkpoint_drops_classifier(tmp_path):
    state = {**generated_vgg_state("vgg19"), "classifier.0.weight": torch.ones(4, 4), "classifier.0.bias": torch.ones(4)}
    torch.save(state, tmp_path / "vgg19-dcbb9e9d.pth")
    model = build_backbone("vgg19", weights_dir=tmp_path)
    assert all(not k.startswith("classifier") for k in model.state_dict())
    assert torch.equal(model.features[0].weight, state["features.0.weight"])


def test_a_half_precision_checkpoint_loads_as_float32_and_a_wrong_one_is_refused(tmp_path):
    """The tensors are taken from the checkpoint without a random initialisation first: cast to the
    network's float32, and held to every key and shape as a plain ``load_state_dict`` is."""
    state = generated_vgg_state("alexnet")
    torch.save({key: value.half() for key, value in state.items()}, tmp_path / "alexnet-owt-7be5be79.pth")
    model = build_backbone("alexnet", weights_dir=tmp_path)
    assert {value.dtype for value in model.state_dict().values()} == {torch.float32}
    assert all(torch.equal(value, state[f"features.{key}"].half().float()) for key, value in model.features.state_dict().items())
    assert not any(value.is_meta for value in model.state_dict().values())
    for broken in ({k: v for k, v in state.items() if k != "features.3.bias"}, {**state, "features.3.bias": torch.zeros(7)}):
        torch.save(broken, tmp_path / "alexnet-owt-7be5be79.pth")
        with pytest.raises(W.WeightsError, match="not a alexnet checkpoint"):
            build_backbone("alexnet", weights_dir=tmp_path)


@pytest.mark.parametrize("name", ["vgg16_l2pool", "dinov2", "inception_v3_fid"])
def test_a_backbone_built_empty_holds_every_tensor_after_loading(weights_dir, name):
    """Built on the meta device and filled from the checkpoint: no parameter or buffer (persistent
    or not, e.g. DISTS's pooling window) may be left without storage."""
    import losses.nets.inception  # noqa: F401 - registers inception_v3_fid

    model = build_backbone(name, weights_dir=weights_dir)
    tensors = [*model.named_parameters(), *model.named_buffers()]
    assert tensors and not [key for key, tensor in tensors if tensor.is_meta]


def test_dinov2_official_layout_and_timm_safetensors(weights_dir, tmp_path):
    from safetensors.torch import save_file

    official = build_backbone("dinov2", weights_dir=weights_dir)
    timm_state = {k: v for k, v in generated_dinov2_official_state().items() if k != "mask_token"}
    save_file(timm_state, str(tmp_path / "vit_base_patch14_dinov2.lvd142m.safetensors"))
    from_timm = build_backbone("dinov2", weights_dir=tmp_path)
    x = torch.rand(1, 3, 20, 33)
    layers = official.layer_names
    a, b = official(x, layers), from_timm(x, layers)
    assert len(a) == 8
    for name in layers:
        assert a[name].shape == (1, 768, 2, 3)  # padded to 28×42 → 2×3 patches
        assert torch.equal(a[name], b[name])
    assert len(official.model.blocks) == 8


def test_dinov2_reflect_padding_split():
    from losses.nets.backbones import DINOv2Features

    x = torch.arange(20 * 17, dtype=torch.float32).view(1, 1, 20, 17)
    padded = DINOv2Features.pad_to_patch_multiple(x)
    assert padded.shape[-2:] == (28, 28)
    expected = torch.nn.functional.pad(x, (5, 6, 4, 4), mode="reflect")
    assert torch.equal(padded, expected)


def test_hugging_face_cache_is_searched(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    snapshot = tmp_path / "hub" / "models--timm--vit_base_patch14_dinov2.lvd142m" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    save_file({"x": torch.zeros(1)}, str(snapshot / "model.safetensors"))
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.delenv("LOSS_SERVICE_WEIGHTS_DIR", raising=False)
    assert W.find_weights(BACKBONES["dinov2"].weights) == snapshot / "model.safetensors"


def test_torch_home_is_searched(tmp_path, monkeypatch):
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save(generated_vgg_state("vgg16"), checkpoints / "vgg16-397923af.pth")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.delenv("LOSS_SERVICE_WEIGHTS_DIR", raising=False)
    assert W.resolve(BACKBONES["vgg16"].weights) == checkpoints / "vgg16-397923af.pth"


def test_missing_file_error_names_file_places_and_command(tmp_path, monkeypatch):
    monkeypatch.delenv("LOSS_SERVICE_WEIGHTS_DIR", raising=False)
    with pytest.raises(WeightsNotFoundError) as info:
        build_backbone("vgg16", pretrained=True, weights_dir=tmp_path / "empty")
    message = str(info.value)
    assert "vgg16-397923af.pth" in message
    assert str(tmp_path / "empty") in message and "checkpoints" in message
    assert "loss-service weights fetch --models vgg16" in message


def test_no_silent_random_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("LOSS_SERVICE_WEIGHTS_DIR", str(tmp_path))
    with pytest.raises(WeightsNotFoundError):
        get_backbone("vgg19", "cpu", pretrained=True, weights_dir=tmp_path)
    random_model = get_backbone("vgg19", "cpu", pretrained=False, weights_dir=tmp_path)
    assert random_model.pretrained is False


def test_checksum_mismatch_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("LOSS_SERVICE_VERIFY_WEIGHTS", "1")
    torch.save(generated_vgg_state("vgg16"), tmp_path / "vgg16-397923af.pth")
    with pytest.raises(W.ChecksumError, match="397923af"):
        build_backbone("vgg16", weights_dir=tmp_path)
    assert W.checksum_status(BACKBONES["vgg16"].weights, tmp_path / "vgg16-397923af.pth") == "mismatch"


def test_checksum_match_is_ok(tmp_path, monkeypatch):
    monkeypatch.setenv("LOSS_SERVICE_VERIFY_WEIGHTS", "1")
    scratch = tmp_path / "scratch.pth"
    torch.save(generated_vgg_state("vgg16"), scratch)
    prefix = hashlib.sha256(scratch.read_bytes()).hexdigest()[:8]
    spec = W.WeightSpec("vgg16", (f"vgg16-{prefix}.pth",), "unused")
    scratch.rename(tmp_path / spec.filenames[0])
    assert W.resolve(spec, tmp_path) == tmp_path / spec.filenames[0]
    assert W.checksum_status(spec, tmp_path / spec.filenames[0]) == "ok"


def test_pickle_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    import pickle

    path = tmp_path / "vgg16-397923af.pth"
    torch.save({"features.0.weight": torch.zeros(1), "evil": Evil()}, path, pickle_module=pickle)
    with pytest.raises(Exception, match="(?i)weights.only|unsupported|global"):
        W.load_state_dict(path)


class MirrorHandler(http.server.BaseHTTPRequestHandler):
    """Serves ``files`` (name → bytes); ``truncate`` names are cut short after their full Content-Length."""

    files: dict[str, bytes] = {}
    truncate: set[str] = set()

    def do_GET(self):
        name = self.path.rsplit("/", 1)[-1]
        if name not in self.files:
            self.send_error(404)
            return
        body = self.files[name]
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2] if name in self.truncate else body)
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture()
def mirror(monkeypatch):
    """A weights mirror on 127.0.0.1 (LOSS_SERVICE_WEIGHTS_BASE_URL), with downloads allowed."""
    handler = type("Handler", (MirrorHandler,), dict(files={}, truncate=set()))
    server = StubHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("LOSS_SERVICE_WEIGHTS_BASE_URL", f"http://127.0.0.1:{server.server_address[1]}/models")
    monkeypatch.delenv("LOSS_SERVICE_OFFLINE", raising=False)
    yield handler
    server.shutdown()


def vgg16_bytes() -> bytes:
    buffer = io.BytesIO()
    torch.save(generated_vgg_state("vgg16"), buffer)
    return buffer.getvalue()


def test_weights_fetch_and_list_commands(tmp_path, monkeypatch, capsys, mirror):
    """``weights fetch`` downloads from the mirror, checks the hash prefix, and lists the result."""
    from service.cli import main

    monkeypatch.setenv("LOSS_SERVICE_VERIFY_WEIGHTS", "1")
    data = vgg16_bytes()
    prefix = hashlib.sha256(data).hexdigest()[:8]
    for name, filename in (("vgg16", f"vgg16-{prefix}.pth"), ("vgg19", "vgg19-00000000.pth")):
        renamed = dataclasses.replace(W.WEIGHT_FILES[name], filenames=(filename,))
        monkeypatch.setitem(W.WEIGHT_FILES, name, renamed)
        monkeypatch.setitem(BACKBONES, name, dataclasses.replace(BACKBONES[name], weights=renamed))
    good, bad = BACKBONES["vgg16"].weights, BACKBONES["vgg19"].weights
    mirror.files.update({good.filenames[0]: data, bad.filenames[0]: data})
    target = tmp_path / "weights"
    assert main(["weights", "fetch", "--models", "vgg16", "--weights-dir", str(target)]) == 0
    assert (target / good.filenames[0]).read_bytes() == data
    assert main(["weights", "fetch", "--models", "vgg19", "--weights-dir", str(target)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("loss-service weights: error: vgg19: ") and "00000000" in err and "Traceback" not in err
    assert sorted(p.name for p in target.iterdir()) == [good.filenames[0]]  # no partial file left
    main(["weights", "list", "--weights-dir", str(target)])
    rows = {line.split("│")[1].strip(): line for line in capsys.readouterr().out.splitlines() if line.count("│") > 2}
    assert "present" in rows["vgg16"] and " ok " in rows["vgg16"] and hashlib.sha256(data).hexdigest() in rows["vgg16"]
    assert "missing" in rows["vgg19"] and "missing" in rows["dinov2"]


def test_truncated_download_leaves_nothing_and_is_never_loaded(tmp_path, mirror):
    spec = BACKBONES["dinov2"].weights  # publishes no hash: only the length can catch a cut
    mirror.files[spec.filenames[0]] = b"x" * 100_000
    mirror.truncate.add(spec.filenames[0])
    with pytest.raises(W.WeightsError, match=r"dinov2: download from .* truncated \(50000 of 100000 bytes\)"):
        W.download(spec, tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(W.WeightsNotFoundError):
        build_backbone("dinov2", weights_dir=tmp_path)


def test_offline_forbids_downloads(tmp_path, mirror, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(W.WeightsError, match="offline"):
        W.ensure(BACKBONES["vgg19"].weights, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_serve_fetches_missing_weights_from_the_mirror(tmp_path, mirror, weights_dir):
    """A fresh machine: ``serve`` fetches what is missing (logging file, size, source), and a
    fetch that fails leaves the server up, saying what failed in /readyz and in the 503."""
    import httpx

    from .servers import SubprocessServer

    mirror.files["vgg16-397923af.pth"] = vgg16_bytes()  # vgg19 is not on the mirror: its fetch fails
    fresh = tmp_path / "fresh"
    env = {
        "LOSS_SERVICE_WEIGHTS_DIR": str(fresh),
        "LOSS_SERVICE_OFFLINE": "0",
        "LOSS_SERVICE_WEIGHTS_BASE_URL": os.environ["LOSS_SERVICE_WEIGHTS_BASE_URL"],
    }
    with SubprocessServer("--models", "vgg16,vgg19", env=env) as srv:
        ready = httpx.get(f"{srv.url}/readyz").json()
        assert ready["models"]["vgg16"]["loaded"] and not ready["models"]["vgg19"]["loaded"], ready["models"]
        assert "vgg19" in ready["missing"] and "404" in ready["models"]["vgg19"]["error"]
        assert (fresh / "vgg16-397923af.pth").read_bytes() == mirror.files["vgg16-397923af.pth"]
        assert not any(p.name.endswith(".partial") for p in fresh.iterdir())
        unavailable = httpx.post(f"{srv.url}/v1/score", files=[("sr", b"x"), ("gt", b"x")], data=dict(metrics="clp_vgg19"))
        assert unavailable.status_code == 503 and "vgg19" in unavailable.json()["detail"][0]["msg"]
        assert "fetching vgg16: vgg16-397923af.pth" in srv.output and "MiB" in srv.output


def test_the_weight_table_is_complete_after_importing_losses_weights_alone():
    """A fresh interpreter that imports only ``losses.nets.weights`` sees every file a metric reads."""
    import json
    import subprocess
    import sys

    code = "import json, losses.nets.weights as W; print(json.dumps(sorted(W.WEIGHT_FILES)))"
    alone = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    from losses import registry
    from losses.nets.backbones import BACKBONES

    read = {spec.weights.name for spec in BACKBONES.values()} | {s.name for m in registry.REGISTRY.values() for s in m.weights}
    assert set(alone) == read and len(alone) == 16
