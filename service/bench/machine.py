"""The machine a benchmark ran on, recorded beside every figure: CPU, BLAS, threads, GPU."""

from __future__ import annotations

import multiprocessing
import platform

import numpy as np

from ..server.memory_calibration import GIB


def sync_device(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cpu_model() -> str:
    """The CPU's marketing name (``/proc/cpuinfo``), so every table says where it was measured."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def blas_info() -> dict:
    """The BLAS behind torch and behind NumPy/SciPy (SSIM's CPU path does not use it)."""
    import re

    import torch

    torch_blas = re.search(r"BLAS_INFO=(\w+)", torch.__config__.show())
    numpy_blas = np.show_config(mode="dicts").get("Build Dependencies", {}).get("blas", {})
    return dict(torch=torch_blas.group(1) if torch_blas else "unknown", numpy=f"{numpy_blas.get('name')} {numpy_blas.get('version')}")


def machine_info(device) -> dict:
    import torch

    info = dict(
        python=platform.python_version(),
        torch=torch.__version__,
        platform=platform.platform(),
        cpu=cpu_model(),
        blas=blas_info(),
        cpu_count=multiprocessing.cpu_count(),
        torch_threads=torch.get_num_threads(),
        device=str(device),
    )
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, capability=f"{props.major}.{props.minor}", gpu_memory_gib=round(props.total_memory / GIB, 1))
    return info
