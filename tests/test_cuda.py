"""The GPU-only paths, run where CUDA is available (the device machine), skipped elsewhere:
backbones follow the input's device, CUDA scores equal CPU scores, and the memory budget reads
free GPU memory."""

import pytest
import torch

import losses
from service.server.memory import MemoryGuard

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (run on the GPU machine)")

METRICS = ("psnr", "ssim", "ms_ssim", "perceptual", "lpips_vgg", "lpips_alex", "dists", "clp_vgg19", "clp_dinov2")


def test_scores_on_cuda_equal_cpu(weights_dir):
    g = torch.Generator().manual_seed(3)
    sr, gt, lr = torch.rand(2, 3, 192, 192, generator=g), torch.rand(2, 3, 192, 192, generator=g), torch.rand(2, 3, 48, 48, generator=g)
    with torch.inference_mode():
        cpu = losses.score(sr, gt, lr, metrics=METRICS)
        cuda = losses.score(sr.cuda(), gt.cuda(), lr.cuda(), metrics=METRICS)
    for name, values in cpu.items():
        assert cuda[name].device.type == "cuda"
        # float64 pixel metrics agree to rounding; float32 backbones within cuDNN's reordering
        tolerance = 1e-9 if name in ("psnr", "ssim", "ms_ssim") else 1e-4
        assert torch.allclose(cuda[name].cpu().double(), values.double(), rtol=tolerance, atol=1e-7), name


def test_backbones_follow_the_input_device(weights_dir):
    loss = losses.PerceptualLoss.from_preset("perceptual")
    x = torch.rand(1, 3, 64, 64, device="cuda", requires_grad=True)
    loss(x, torch.rand(1, 3, 64, 64, device="cuda")).backward()
    assert x.grad is not None and x.grad.device.type == "cuda"
    assert next(losses.get_backbone("vgg16", "cuda").parameters()).device.type == "cuda"
    assert next(losses.get_backbone("vgg16", "cpu").parameters()).device.type == "cpu"  # one instance per device


def test_memory_budget_reads_free_gpu_memory():
    guard = MemoryGuard(torch.device("cuda"), None)
    budget, source = guard.budget()
    free, total = torch.cuda.mem_get_info()
    assert source.startswith("free memory on cuda") and 0 < budget <= total and abs(budget - free) < 2**30
