"""Shared fixtures: generated checkpoints in the real formats, and real photos.

Nothing here downloads. Checkpoints are small-valued deterministic random weights written in
torchvision's and DINOv2's file layouts; the real loader reads them.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import warnings
from pathlib import Path

# Point every cache at empty directories before anything reads them, so no test can pick
# up (or download) real weights, and make generated checkpoints acceptable.
_SANDBOX = Path(tempfile.mkdtemp(prefix="loss-service-tests-"))
# Removed when the test session's own process exits (not a forked child's): its generated
# checkpoints weigh ~0.7 GB, which every run would otherwise leave behind.
atexit.register(lambda creator=os.getpid(): os.getpid() == creator and shutil.rmtree(_SANDBOX, ignore_errors=True))
os.environ["TORCH_HOME"] = str(_SANDBOX / "torch")
os.environ["HF_HOME"] = str(_SANDBOX / "hf")
os.environ.pop("HF_HUB_CACHE", None)
os.environ.pop("LOSS_SERVICE_AUTO_DOWNLOAD", None)
os.environ["LOSS_SERVICE_VERIFY_WEIGHTS"] = "0"
os.environ["LOSS_SERVICE_OFFLINE"] = "1"  # the download tests lift this for a local HTTP server only

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from . import maniqa_reference, musiq_reference  # noqa: E402

GENERATED_SEED = 1234


def generated_vgg_state(name: str) -> dict[str, torch.Tensor]:
    """A torchvision-format ``features.*`` state dict (vgg16, vgg19, alexnet) with deterministic random weights."""
    import torchvision

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(GENERATED_SEED)
        features = getattr(torchvision.models, name)(weights=None).features
    return {f"features.{k}": v for k, v in features.state_dict().items()}


def generated_dinov2_official_state() -> dict[str, torch.Tensor]:
    """The official ``dinov2_vitb14_pretrain.pth`` layout (mask_token included), random weights.

    LayerScale γ is drawn from U(0.1, 1), not timm's init of 1e-5, so every block changes its
    input: a loss that read the wrong blocks would differ by far more than any tolerance."""
    import timm

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(GENERATED_SEED)
        model = timm.create_model("vit_base_patch14_dinov2.lvd142m", pretrained=False, num_classes=0)
        state = dict(model.state_dict())
        for key in state:
            if key.endswith((".ls1.gamma", ".ls2.gamma")):
                state[key] = torch.empty_like(state[key]).uniform_(0.1, 1.0)
        state["mask_token"] = torch.zeros(1, 768)
    return state


def generated_inception_state() -> dict[str, torch.Tensor]:
    """``pt_inception-2015-12-05-6726825d.pth``'s layout (torchvision ``Inception3`` key names, 1008
    classes), random weights scaled so features neither vanish nor explode: He-normal
    convolutions and batch-norm statistics drawn near identity, so every block changes the features."""
    from losses.nets.inception import fid_inception_v3

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(GENERATED_SEED)
        state = dict(fid_inception_v3().state_dict())
        for key, value in state.items():
            if key.endswith("conv.weight"):
                state[key] = torch.randn_like(value) * (2.0 / value[0].numel()) ** 0.5
            elif key.endswith("bn.weight") or key.endswith("bn.running_var"):
                state[key] = torch.empty_like(value).uniform_(0.7, 1.3)
            elif key.endswith(("bn.bias", "bn.running_mean")):
                state[key] = torch.empty_like(value).uniform_(-0.1, 0.1)
            elif key.startswith("fc."):
                state[key] = torch.randn_like(value) * 0.02
    return state


# A small CLIP of OpenAI's layout: ResNet stages of 1, 2, 1, 1 blocks on an 8-channel stem, a
# 2-layer text transformer of width 64, 64-d embeddings (the loader reads the sizes from the shapes).
TINY_CLIP = dict(embed_dim=64, layers=(1, 2, 1, 1), width=8, text_width=64, text_layers=2)


def tiny_open_clip():
    """open_clip's ``CLIP`` (OpenAI's architecture and key names, QuickGELU) at TINY_CLIP's sizes."""
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    vision = CLIPVisionCfg(layers=TINY_CLIP["layers"], width=TINY_CLIP["width"], image_size=224)
    text = CLIPTextCfg(context_length=77, vocab_size=49408, width=TINY_CLIP["text_width"], heads=1, layers=TINY_CLIP["text_layers"])
    return CLIP(TINY_CLIP["embed_dim"], vision, text, quick_gelu=True).eval()


def write_clip_archive(path: Path) -> None:
    """OpenAI's ``RN50.pt`` format, a TorchScript archive of CLIP, at TINY_CLIP's sizes: He-normal
    convolutions and linear layers, batch and layer norms near identity, CLIP's ×100 temperature."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(GENERATED_SEED)
        model = tiny_open_clip()
        state = model.state_dict()
        for key, value in state.items():
            if not value.is_floating_point() or key == "attn_mask":
                continue
            norm = key.rsplit(".", 1)[0] + ".running_mean" in state or key.rsplit(".", 1)[0].endswith(("ln_1", "ln_2", "ln_final"))
            if key == "logit_scale":
                state[key] = torch.tensor(float(np.log(100.0)))
            elif key.endswith("running_var") or (norm and key.endswith("weight")):
                state[key] = torch.empty_like(value).uniform_(0.7, 1.3)
            elif key.endswith("running_mean") or key.endswith("bias"):
                state[key] = torch.empty_like(value).uniform_(-0.1, 0.1)
            elif value.dim() >= 2:
                fan_in = value[0].numel() if value.dim() > 2 else value.shape[-1]
                state[key] = torch.randn_like(value) * (2.0 / fan_in) ** 0.5
            else:
                state[key] = torch.randn_like(value) * 0.1
        model.load_state_dict(state)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer's notes on shape checks, torch.jit's deprecation notice
            torch.jit.save(torch.jit.trace_module(model, {"encode_image": torch.rand(1, 3, 224, 224)}), str(path))


class ScalarWriter:
    """TensorBoard's ``SummaryWriter`` as the validator uses it: records each ``add_scalar``."""

    def __init__(self):
        self.scalars = []

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, value, step))


class WandbRun:
    """A Weights & Biases run as the validator uses it: records each ``log``."""

    def __init__(self):
        self.logged = []

    def log(self, values, step):
        self.logged.append((values, step))


def write_weights(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(generated_vgg_state("vgg16"), directory / "vgg16-397923af.pth")
    torch.save(generated_vgg_state("vgg19"), directory / "vgg19-dcbb9e9d.pth")
    torch.save(generated_vgg_state("alexnet"), directory / "alexnet-owt-7be5be79.pth")
    torch.save(generated_dinov2_official_state(), directory / "dinov2_vitb14_pretrain.pth")
    torch.save(generated_inception_state(), directory / "pt_inception-2015-12-05-6726825d.pth")
    write_clip_archive(directory / "RN50.pt")
    for offset, dataset in enumerate(("koniq10k", "kadid10k")):  # the authors' MANIQA state dicts
        torch.save(maniqa_reference.generated_state(GENERATED_SEED + offset), directory / f"ckpt_{dataset}.pt")
    for offset, dataset in enumerate(("koniq", "spaq", "paq2piq", "ava")):  # the authors' MUSIQ .npz files
        params = musiq_reference.generated_params(GENERATED_SEED + offset, classes=10 if dataset == "ava" else 1)
        np.savez(directory / f"{dataset}_ckpt.npz", **params)
    return directory


@pytest.fixture(scope="session")
def weights_dir() -> Path:
    """A weights directory holding every generated checkpoint; set as the default dir."""
    directory = write_weights(_SANDBOX / "weights")
    os.environ["LOSS_SERVICE_WEIGHTS_DIR"] = str(directory)
    return directory


@pytest.fixture(scope="session")
def vgg16_server(weights_dir):
    """One ``serve --models vgg16`` shared by every module that needs a plain server and leaves it
    as it found it (a start costs ~8 s on 2 cores); a test that changes or stops a server starts its own."""
    from .servers import SubprocessServer

    with SubprocessServer("--models", "vgg16") as srv:
        yield srv


@pytest.fixture(scope="session")
def photos() -> list[np.ndarray]:
    """scikit-image's bundled photos (uint8 RGB); chelsea and coffee are non-square."""
    from skimage import data

    return [data.astronaut()[:256, :256], data.chelsea(), data.coffee()[:200, :300]]


def degrade(image: np.ndarray, seed: int) -> np.ndarray:
    """A blurred, noisy, re-quantised copy of a uint8 image."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    blurred = gaussian_filter(image.astype(np.float64), sigma=(1.0, 1.0, 0))
    return np.clip(blurred + rng.normal(0, 6, image.shape), 0, 255).round().astype(np.uint8)


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 H×W×C → (1, C, H, W) float32 in [0, 1]."""
    return torch.from_numpy(image).permute(2, 0, 1).unsqueeze(0).float() / 255.0
