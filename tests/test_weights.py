"""The real loader on generated checkpoints in the real formats; errors and verification."""

import hashlib

import pytest
import torch

from losses import WeightsNotFoundError, get_backbone
from losses import weights as W
from losses.backbones import build_dinov2, build_vgg

from .conftest import generated_dinov2_official_state, generated_vgg_state


def test_features_only_checkpoint_loads(weights_dir):
    model = build_vgg("vgg16", pretrained=True, weights_dir=weights_dir)
    expected = generated_vgg_state("vgg16")
    assert model.pretrained
    for key, value in model.features.state_dict().items():
        assert torch.equal(value, expected[f"features.{key}"])
    assert not hasattr(model, "classifier")


def test_full_checkpoint_drops_classifier(tmp_path):
    state = {**generated_vgg_state("vgg19"), "classifier.0.weight": torch.ones(4, 4), "classifier.0.bias": torch.ones(4)}
    torch.save(state, tmp_path / "vgg19-dcbb9e9d.pth")
    model = build_vgg("vgg19", weights_dir=tmp_path)
    assert all(not k.startswith("classifier") for k in model.state_dict())
    assert torch.equal(model.features[0].weight, state["features.0.weight"])


def test_dinov2_official_layout_and_timm_safetensors(weights_dir, tmp_path):
    from safetensors.torch import save_file

    official = build_dinov2(weights_dir=weights_dir)
    timm_state = {k: v for k, v in generated_dinov2_official_state().items() if k != "mask_token"}
    save_file(timm_state, str(tmp_path / "vit_base_patch14_dinov2.lvd142m.safetensors"))
    from_timm = build_dinov2(weights_dir=tmp_path)
    x = torch.rand(1, 3, 20, 33)
    layers = official.layer_names
    a, b = official(x, layers), from_timm(x, layers)
    assert len(a) == 8
    for name in layers:
        assert a[name].shape == (1, 768, 2, 3)  # padded to 28×42 → 2×3 patches
        assert torch.equal(a[name], b[name])
    assert len(official.model.blocks) == 8


def test_dinov2_reflect_padding_split():
    from losses.backbones import DINOv2Features

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
    assert W.find_weights(W.WEIGHT_SPECS["dinov2"]) == snapshot / "model.safetensors"


def test_torch_home_is_searched(tmp_path, monkeypatch):
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save(generated_vgg_state("vgg16"), checkpoints / "vgg16-397923af.pth")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.delenv("LOSS_SERVICE_WEIGHTS_DIR", raising=False)
    assert W.resolve(W.WEIGHT_SPECS["vgg16"]) == checkpoints / "vgg16-397923af.pth"


def test_missing_file_error_names_file_places_and_command(tmp_path, monkeypatch):
    monkeypatch.delenv("LOSS_SERVICE_WEIGHTS_DIR", raising=False)
    with pytest.raises(WeightsNotFoundError) as info:
        build_vgg("vgg16", pretrained=True, weights_dir=tmp_path / "empty")
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
        build_vgg("vgg16", weights_dir=tmp_path)
    assert W.checksum_status(W.WEIGHT_SPECS["vgg16"], tmp_path / "vgg16-397923af.pth") == "mismatch"


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


def test_weights_fetch_and_list_commands(tmp_path, monkeypatch, capsys):
    """``weights fetch`` downloads through torch.hub with the hash check; file:// stands in for the network."""
    from service.cli import main

    source = tmp_path / "mirror" / "scratch.pth"
    source.parent.mkdir()
    torch.save(generated_vgg_state("vgg16"), source)
    prefix = hashlib.sha256(source.read_bytes()).hexdigest()[:8]
    good = W.WeightSpec("vgg16", (f"vgg16-{prefix}.pth",), source.as_uri())
    bad = W.WeightSpec("vgg19", ("vgg19-00000000.pth",), source.as_uri())
    monkeypatch.setattr(W, "WEIGHT_SPECS", {"vgg16": good, "vgg19": bad})
    target = tmp_path / "weights"
    assert main(["weights", "fetch", "--models", "vgg16", "--weights-dir", str(target)]) == 0
    assert (target / good.filenames[0]).read_bytes() == source.read_bytes()
    with pytest.raises(RuntimeError, match="(?i)hash"):
        main(["weights", "fetch", "--models", "vgg19", "--weights-dir", str(target)])
    assert not (target / bad.filenames[0]).exists()
    monkeypatch.setenv("LOSS_SERVICE_VERIFY_WEIGHTS", "1")
    main(["weights", "list", "--weights-dir", str(target)])
    listing = capsys.readouterr().out
    assert "present" in listing and "ok" in listing and "missing" in listing
