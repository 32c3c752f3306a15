"""Fault injection for tests/test_reliability.py (put tests/scripts on PYTHONPATH): callbacks that record the
per-step loss and send a signal to their own process at a chosen moment of a `ctsr fit`."""
from __future__ import annotations

import json
import os
import signal

import torch
from lightning.pytorch.callbacks import Callback


class LossLog(Callback):
    """Appends {"step", "loss"} (the loss as a float64 repr, bit-exact) per training step to ``path``."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": trainer.global_step, "loss": float(torch.as_tensor(loss).double())}) + "\n")


class KillAt(Callback):
    """Sends ``signal`` (a name: SIGKILL, SIGTERM, SIGINT) to this process at ``moment`` of step ``step``:
    ``train_batch_end`` (after the step, before ModelCheckpoint saves it), ``validation_start`` (after the step's
    checkpoint, before its validation) or ``validation_batch`` (inside the validation at that step)."""

    def __init__(self, moment: str, step: int, signal: str = "SIGKILL") -> None:
        self.moment, self.step, self.signum = moment, step, getattr(signal_module, signal)
        self.sent = False

    def _fire(self, trainer, moment: str) -> None:
        if moment == self.moment and trainer.global_step == self.step and not self.sent:
            self.sent = True
            os.kill(os.getpid(), self.signum)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._fire(trainer, "train_batch_end")

    def on_validation_start(self, trainer, pl_module) -> None:
        self._fire(trainer, "validation_start")

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._fire(trainer, "validation_batch")

    def state_dict(self) -> dict:
        return {}


signal_module = signal
