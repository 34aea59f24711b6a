"""The one process-wide cache of frozen models: backbones, LPIPS heads and DISTS α/β, each built
once per key (name, device, weights) and shared by every loss and request in the process."""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Any

import torch


class ModelCache:
    """``get(key, build)``: the cached value, built on first use under one lock (two threads
    asking at once build once). ``clear()`` forgets everything."""

    def __init__(self) -> None:
        self._lock = threading.RLock()  # reentrant: building one model may ask for another
        self._models: dict[Hashable, Any] = {}

    def get(self, key: Hashable, build: Callable[[], Any]) -> Any:
        with self._lock:
            if key not in self._models:
                # Built outside any caller's inference_mode: inference tensors as weights would make
                # every later backward() through the shared instance fail.
                with torch.inference_mode(False):
                    self._models[key] = build()
            return self._models[key]

    def clear(self) -> None:
        with self._lock:
            self._models.clear()

    def __len__(self) -> int:
        return len(self._models)


MODELS = ModelCache()
