"""The Lightning callback in a real ``Trainer`` on CPU: a tiny SR model trained for 2 epochs,
validated through a live server; the values equal ``losses.score`` of the same outputs, and a
server killed mid-fit does not stop ``fit()``."""

from __future__ import annotations

import logging

import pytest
import torch

import losses

pl = pytest.importorskip("pytorch_lightning")

from service.client.lightning import ServerValidation  # noqa: E402

from .servers import SubprocessServer  # noqa: E402


class TinySR(pl.LightningModule):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Upsample(scale_factor=2), torch.nn.Conv2d(3, 3, 3, padding=1))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        lr, gt = batch
        return torch.nn.functional.l1_loss(self(lr), gt)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


def data(seed: int, count: int = 8):
    g = torch.Generator().manual_seed(seed)
    gt = torch.rand(count, 3, 32, 32, generator=g)
    return torch.nn.functional.avg_pool2d(gt, 2), gt


def loader():
    lr, gt = data(1)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(lr, gt), batch_size=2)


class Recorder(ServerValidation):
    """Keeps the SR images each validation sent, to score them with the library too."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.sent = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        before = len(self.sent_steps)
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if len(self.sent_steps) > before:
            with torch.no_grad():
                pl_module.eval()
                self.sent[trainer.global_step] = pl_module(self.lr).clamp(0, 1)
                pl_module.train()


def trainer(callback) -> pl.Trainer:
    return pl.Trainer(
        max_epochs=2, accelerator="cpu", callbacks=[callback], logger=False, enable_checkpointing=False, enable_progress_bar=False
    )


def test_a_real_trainer_validates_through_the_server_with_the_library_values(vgg16_server):
    val_lr, val_gt = data(2, count=3)
    callback = Recorder(vgg16_server.url, val_lr, val_gt, metrics="psnr,ssim", every_n_steps=3)
    trainer(callback).fit(TinySR(), loader())
    assert callback.sent_steps == [3, 6]  # 8 steps: 4 batches × 2 epochs
    for step in callback.sent_steps:
        expected = losses.score(callback.sent[step], val_gt, metrics=["psnr", "ssim"])
        got = callback.result(step, timeout=60)["per_image"]
        for index, scores in enumerate(got):
            assert scores["psnr"] == pytest.approx(expected["psnr"][index].item(), rel=1e-9)
            assert scores["ssim"] == pytest.approx(expected["ssim"][index].item(), rel=1e-9)


def test_a_killed_server_does_not_stop_fit(weights_dir, caplog):
    caplog.set_level(logging.ERROR, logger="loss_service.validator")
    val_lr, val_gt = data(2, count=2)
    server = SubprocessServer("--models", "")  # psnr only: no backbone to load
    server.__enter__()
    callback = ServerValidation(server.url, val_lr, val_gt, metrics="psnr", every_n_steps=2, retries=0, timeout=5)

    class KillAfterFirst(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step == 3 and server.process is not None:
                callback.result(2, timeout=60)  # the first validation went through
                server.__exit__(None, None, None)

    fit = pl.Trainer(
        max_epochs=2,
        accelerator="cpu",
        callbacks=[callback, KillAfterFirst()],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
    )
    fit.fit(TinySR(), loader())
    assert fit.global_step == 8 and callback.sent_steps == [2, 4, 6, 8]
    assert callback.result(2)["per_image"][0]["psnr"] > 0
    with pytest.raises(Exception, match="connect|Connect|refused"):
        callback.result(6)
    assert len([r for r in caplog.records if "failed" in r.message]) == 1  # logged once
