"""A PyTorch Lightning ``Callback`` that validates through a loss-service server without
stopping training: every ``every_n_steps`` optimiser steps it runs the model on a fixed
validation batch and hands the output to a ``Validator`` (non-blocking, bounded; a dead server
is logged once and ``fit()`` goes on). Needs the ``lightning`` extra (``pytorch-lightning``).

    trainer = pl.Trainer(callbacks=[ServerValidation("http://gpu-1:8000", lr_images, gt_images,
                                                     metrics="psnr,ssim,lpips_alex", crop_border=4)])

Each result is logged to the trainer's logger when it has ``add_scalar`` (TensorBoard) or ``log``
(Weights & Biases), under ``validation/<metric>`` at the step it was sent, and ``result(step)``
returns it. ``forward`` turns the validation inputs into SR images (default: ``pl_module(lr)``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
import torch

from .validator import Validator


class ServerValidation(pl.Callback):
    def __init__(
        self,
        url: str,
        lr: torch.Tensor,
        gt: torch.Tensor,
        metrics: str = "psnr,ssim",
        every_n_steps: int = 10,
        forward: Callable[[pl.LightningModule, torch.Tensor], torch.Tensor] | None = None,
        **validator_options: Any,
    ):
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be at least 1, got {every_n_steps}")
        self.url, self.metrics, self.every_n_steps = url, metrics, every_n_steps
        self.lr, self.gt = lr, gt
        self.forward = forward or (lambda module, lr: module(lr))
        self.validator_options = validator_options
        self.validator: Validator | None = None
        self.sent_steps: list[int] = []

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        experiment = getattr(trainer.logger, "experiment", None) if trainer.logger is not None else None
        writer = experiment if hasattr(experiment, "add_scalar") else None
        run = experiment if writer is None and hasattr(experiment, "log") else None
        self.validator = Validator(self.url, self.metrics, writer=writer, wandb_run=run, **self.validator_options)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx: int) -> None:
        step = trainer.global_step
        if step % self.every_n_steps or step in self.sent_steps or self.validator is None:
            return
        was_training = pl_module.training
        pl_module.eval()
        with torch.no_grad():
            sr = self.forward(pl_module, self.lr.to(pl_module.device)).clamp(0, 1)
        pl_module.train(was_training)
        self.validator(step, sr, self.gt.to(sr.device))
        self.sent_steps.append(step)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.validator is not None:
            self.validator.close()  # scores what is queued; a failed step's result raises, fit() has ended normally

    def result(self, step: int, timeout: float | None = None) -> dict:
        """The server's answer for ``step`` (``per_image``, ``mean``, ``conventions``), or its error."""
        if self.validator is None:
            raise RuntimeError("fit() has not started")
        return self.validator.result(step, timeout)
