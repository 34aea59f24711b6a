"""Device selection and the start-up check for the production GPU (a Tesla P4, sm_61)."""

from __future__ import annotations

import logging

import torch

log = logging.getLogger("loss_service")

MIN_CAPABILITY_FOR_HALF = (7, 0)


class DeviceError(RuntimeError):
    pass


def select_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"--device {name}: CUDA is not available in this process")
    return device


def check_device(device: torch.device, precision: str) -> list[str]:
    """Log the GPU, refuse half precision below compute capability 7.0, warn on missing kernels.

    Returns the warnings it logged.
    """
    warnings: list[str] = []
    if device.type != "cuda":
        return warnings
    index = device.index if device.index is not None else torch.cuda.current_device()
    props = torch.cuda.get_device_properties(index)
    capability = (props.major, props.minor)
    log.info("device %s: %s, compute capability %d.%d, %.1f GiB", device, props.name, *capability, props.total_memory / 2**30)
    if precision in ("fp16", "bf16") and capability < MIN_CAPABILITY_FOR_HALF:
        raise DeviceError(
            f"--precision {precision} refused on {props.name} (compute capability {capability[0]}.{capability[1]}): "
            f"half precision needs ≥ 7.0 to be fast (Pascal runs FP16 at 1/64 of FP32). Use --precision fp32."
        )
    arch = f"sm_{capability[0]}{capability[1]}"
    arch_list = torch.cuda.get_arch_list()
    if arch_list and arch not in arch_list:
        message = (
            f"this torch build ({torch.__version__}) has no kernels for {arch} ({props.name}); it ships {arch_list}. "
            f"Install a build that does (for Pascal: a CUDA 12.6 wheel)."
        )
        log.warning(message)
        warnings.append(message)
    return warnings
