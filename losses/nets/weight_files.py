"""Every weight file the library reads, declared in one table: ``WEIGHT_FILES``.

A declaration is data only (names, URL, hash, the copy a package ships), so this module imports
nothing of the project and the table is complete as soon as ``losses.nets.weights`` is imported: the
backbones' checkpoints, LPIPS's linear heads, DISTS's α/β, NIQE's pristine model and the FID
Inception. The modules that read a file name its constant here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class WeightSpec:
    """One weight file: its name, accepted file names, download URL and hash. The hash is
    ``sha256`` where given, else the prefix in a torchvision file name."""

    name: str
    filenames: tuple[str, ...]
    url: str
    hf_repo: str | None = None
    hf_filename: str = "model.safetensors"
    sha256: str | None = None
    bundled: tuple[str, str] | None = None  # (package, path inside it): a copy that package ships
    description: str = ""

    @property
    def sha256_prefix(self) -> str | None:
        """The published hash: ``sha256``, or torchvision's ``<name>-<first 8+ hex of sha256>.pth``."""
        if self.sha256 is not None:
            return self.sha256
        match = re.search(r"-([a-f0-9]{6,})\.", self.filenames[0])
        return match.group(1) if match else None


WEIGHT_FILES: dict[str, WeightSpec] = {}


def register_weights(spec: WeightSpec) -> WeightSpec:
    """Declare a weight file once; ``weights list``/``fetch`` and verification follow from it."""
    if WEIGHT_FILES.setdefault(spec.name, spec) is not spec:
        raise ValueError(f"weight file {spec.name!r} is declared twice")
    return spec


# --- the files ----------------------------------------------------------------------------------

VGG16_FILE = register_weights(
    WeightSpec(
        "vgg16",
        ("vgg16-397923af.pth",),
        "https://download.pytorch.org/models/vgg16-397923af.pth",
        description="torchvision VGG16 IMAGENET1K_V1",
    )
)

VGG19_FILE = register_weights(
    WeightSpec(
        "vgg19",
        ("vgg19-dcbb9e9d.pth",),
        "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth",
        description="torchvision VGG19 IMAGENET1K_V1",
    )
)

ALEXNET_FILE = register_weights(
    WeightSpec(
        "alexnet",
        ("alexnet-owt-7be5be79.pth",),
        "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
        description="torchvision AlexNet IMAGENET1K_V1",
    )
)

DINOV2_FILE = register_weights(
    WeightSpec(
        "dinov2",
        ("dinov2_vitb14_pretrain.pth", "vit_base_patch14_dinov2.lvd142m.safetensors"),
        "https://dl.fbaipublicfiles.com/dinov2/dinov2_vitb14/dinov2_vitb14_pretrain.pth",
        hf_repo="timm/vit_base_patch14_dinov2.lvd142m",
        description="DINOv2 ViT-B/14 (LVD-142M)",
    )
)

FID_INCEPTION_FILE = register_weights(
    WeightSpec(
        "inception_v3_fid",
        ("pt_inception-2015-12-05-6726825d.pth", "weights-inception-2015-12-05-6726825d.pth"),
        "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth",
        sha256="6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2",
        description="InceptionV3 2015-12-05 (TensorFlow FID graph) as pytorch-fid and torch-fidelity load it",
    )
)

DISTS_ALPHA_BETA = register_weights(
    WeightSpec(
        "dists_alpha_beta",
        ("dists_weights.pt",),
        "https://github.com/dingkeyan93/DISTS/raw/master/DISTS_pytorch/weights.pt",
        sha256="f5e65c96230b7f6ca995691647d482237e4cab8a50c5c4a5784f219ef0748218",
        bundled=("DISTS_pytorch", "weights.pt"),
        description="DISTS α and β (dists-pytorch's weights.pt)",
    )
)

NIQE_PRISTINE = register_weights(
    WeightSpec(
        "niqe_pristine",
        ("niqe_pris_params.npz",),
        "https://github.com/XPixelGroup/BasicSR/raw/master/basicsr/metrics/niqe_pris_params.npz",
        sha256="2a7c182a68c9e7f1b2e2e5ec723279d6f65d912b6fcaf37eb2bf03d7367c4296",
        bundled=("losses", "data/niqe_pris_params.npz"),
        description="NIQE pristine model (μ 1×36, Σ 36×36) and its 7×7 window, LIVE niqe_release via BasicSR",
    )
)

CLIP_RN50_FILE = register_weights(
    WeightSpec(
        "clip_rn50",
        ("RN50.pt",),
        "https://openaipublic.azureedge.net/clip/models/afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762/RN50.pt",
        sha256="afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762",
        description="OpenAI CLIP ResNet-50 (TorchScript archive, as clip.load('RN50') reads it), for CLIP-IQA",
    )
)

MANIQA_FILES = {
    dataset: register_weights(
        WeightSpec(
            f"maniqa_{dataset}",
            (f"ckpt_{dataset}.pt",),
            f"https://github.com/IIGROUP/MANIQA/releases/download/{release}/ckpt_{dataset}.pt",
            description=f"MANIQA trained on {label} (the authors' release {release}: a state dict, no published hash)",
        )
    )
    for dataset, release, label in (("koniq10k", "Koniq10k", "KonIQ-10k"), ("kadid10k", "Kadid10k", "KADID-10k"))
}

MUSIQ_FILES = {
    dataset: register_weights(
        WeightSpec(
            f"musiq_{dataset}",
            (f"{dataset}_ckpt.npz",),
            f"https://storage.googleapis.com/gresearch/musiq/{dataset}_ckpt.npz",
            description=f"MUSIQ (3 scales) trained on {label}: the authors' JAX checkpoint (.npz, no published hash)",
        )
    )
    for dataset, label in (("koniq", "KonIQ-10k"), ("spaq", "SPAQ"), ("paq2piq", "PaQ-2-PiQ"), ("ava", "AVA"))
}

LPIPS_HEADS = {
    net: register_weights(
        WeightSpec(
            f"lpips_{net}_heads",
            (f"lpips_v0.1_{net}.pth",),
            f"https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/{net}.pth",
            sha256=sha256,
            bundled=("lpips", f"weights/v0.1/{net}.pth"),
            description=f"LPIPS v0.1 linear heads, {net}",
        )
    )
    for net, sha256 in (
        ("vgg", "a78928a0af1e5f0fcb1f3b9e8f8c3a2a5a3de244d830ad5c1feddc79b8432868"),
        ("alex", "df73285e35b22355a2df87cdb6b70b343713b667eddbda73e1977e0c860835c0"),
    )
}
