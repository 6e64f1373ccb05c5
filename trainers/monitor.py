"""What the user watches: a tqdm progress bar (loss, learning rate; tqdm adds it/s and ETA) and
TensorBoard logs (loss, learning rates, gradient norm, sample images) under ``<output.dir>/logs``."""
from __future__ import annotations

import collections
from pathlib import Path

import numpy as np


class Monitor:
    def __init__(self, total: int, initial: int, log_dir: Path | None, enabled: bool = True):
        from tqdm.auto import tqdm

        self.enabled = enabled
        self.recent: collections.deque[float] = collections.deque(maxlen=20)
        self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, disable=not enabled,
                        desc="training")
        self.writer = None
        if enabled and log_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional
                self.writer = None
            else:
                self.writer = SummaryWriter(log_dir=str(log_dir))

    def step(self, step: int, loss: float | None, lrs: dict[str, float], grad_norm: float | None) -> None:
        if loss is not None:
            self.recent.append(loss)
        if self.enabled:
            avg = sum(self.recent) / len(self.recent) if self.recent else float("nan")
            self.bar.set_postfix(loss=f"{avg:.4f}", lr=f"{next(iter(lrs.values()), 0):.2e}", refresh=False)
            self.bar.update(1)
        if self.writer is not None:
            if loss is not None:
                self.writer.add_scalar("loss", loss, step)
            for name, lr in lrs.items():
                self.writer.add_scalar(f"lr/{name}", lr, step)
            if grad_norm is not None:
                self.writer.add_scalar("grad_norm", grad_norm, step)

    def images(self, step: int, images: list) -> None:
        if self.writer is None:
            return
        for i, (_, image) in enumerate(images):
            self.writer.add_image(f"sample/{i}", np.asarray(image.convert("RGB")), step, dataformats="HWC")

    def write(self, text: str) -> None:
        if self.enabled:
            self.bar.write(text)

    def close(self) -> None:
        self.bar.close()
        if self.writer is not None:
            self.writer.close()
