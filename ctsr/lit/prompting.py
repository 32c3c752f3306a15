"""Per-image prompts in training (``prompting.train_source: gt``, :mod:`ctsr.models.prompting`).

The generator tags every LR batch it encodes by itself (validation, the t sweep, ``train_source: lr``). OSEDiff's
training tags the ground truth instead (``train_osediff.py``): these hooks pin each training batch's contexts from
its ``hr`` before the step — the student, the realness teacher and the fidelity teacher all read them — and release
them after. Without ``prompting`` (or ``mode: fixed``) they do nothing.
"""
from __future__ import annotations


class GroundTruthPrompts:
    """LightningModule mixin (before ``L.LightningModule`` in the bases); needs a ``generator`` attribute."""

    def _prompter(self):
        return getattr(getattr(self, "generator", None), "prompter", None)

    def on_train_batch_start(self, batch, batch_idx: int):
        prompter = self._prompter()
        if prompter is not None and prompter.spec.train_source == "gt" and "hr" in batch:
            prompter.pin(self.generator, batch["hr"], "gt")

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        prompter = self._prompter()
        if prompter is not None:
            prompter.unpin(self.generator)
