"""The training progress bar of ``ctsr fit``: steps out of ``max_steps``.

Lightning's bars count the batches of the current epoch and show ``Epoch E/max_epochs-1``, which reads
``Epoch 14/-2`` in a run bounded by ``trainer.max_steps`` (``max_epochs`` -1). With ``max_steps`` set, this bar
counts optimiser steps (``trainer.global_step``) out of ``max_steps`` across epochs (``Epoch 14: … 1200/5000
[…step/s]``); without it, it is Lightning's :class:`TQDMProgressBar` unchanged. The CLI adds it unless the config
gives a progress bar of its own or ``trainer.enable_progress_bar: false``.
"""
from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import TQDMProgressBar


def _max_steps(trainer) -> int | None:
    steps = getattr(trainer, "max_steps", -1)
    return int(steps) if steps is not None and steps > 0 else None


class StepProgressBar(TQDMProgressBar):
    """:class:`TQDMProgressBar` whose training bar is ``global_step / max_steps`` when ``max_steps`` is set."""

    def on_train_epoch_start(self, trainer, *args: Any) -> None:
        steps = _max_steps(trainer)
        if steps is None:
            return super().on_train_epoch_start(trainer, *args)
        if self._leave:
            self.train_progress_bar = self.init_train_tqdm()
        bar = self.train_progress_bar
        if self._leave or bar.total != steps:  # once per run: the bar spans epochs, so its rate is steps/s
            bar.reset(total=steps)
            bar.initial = bar.n = min(trainer.global_step, steps)  # a resumed run counts from its step
        bar.unit = "step"
        bar.set_description(f"Epoch {trainer.current_epoch}")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        steps = _max_steps(trainer)
        if steps is None:
            return super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        bar = self.train_progress_bar
        n = min(trainer.global_step, steps)
        if bar is not None and self._should_update(n, steps) and not bar.disable:
            bar.n = n
            bar.refresh()
            bar.set_postfix(self.get_metrics(trainer, pl_module))
