"""Evaluate any trained CTSR file without its training config: ``ctsr test --config experiments/eval.yaml
--ckpt_path runs/<name>/checkpoints/last.ckpt`` (or ``--model.init_args.model_path model.safetensors``)."""
from __future__ import annotations

import lightning as L
import torch

from ctsr.models.export import load_model, model_from_checkpoint


class TrainedModel(L.LightningModule):
    """Wraps a trained model (stage 1 or 2, ``.ckpt`` or ``.safetensors``) for ``ctsr test``/``validate``/``predict``;
    the ``TSweepEvaluation`` callback measures it (and writes its images with ``save_images``).

    Args:
        model_path: a model file; alternatively pass the checkpoint as ``--ckpt_path``.
        pretrained / osediff_lora: override the base-weight locations recorded in the file.
        t: the control value of ``predict``; None (default): the model's recorded ``selected_t``, else 0.
        fidelity_teacher: the fidelity teacher's SR model (``bicubic`` or a spandrel checkpoint: ResShift's,
            Real-ESRGAN's, …) whose image x_f = T_f(x_LR) the t sweep measures SR(t) against (``d_fidelity_*``
            columns); None: no such columns. Low-light models (scale 1): ``gsad``, ``retidiff``, ``gamma``, ….
        fidelity_scale: that teacher's scale (None: the model's when ``model_path`` is given, else 4).
    """

    def __init__(self, model_path: str | None = None, pretrained: str | None = None,
                 osediff_lora: str | None = None, t: float | None = None, fidelity_teacher: str | None = None,
                 fidelity_scale: int | None = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = load_model(model_path, pretrained, osediff_lora) if model_path else None
        self.fidelity_teacher = None
        if fidelity_teacher is not None:
            from ctsr.models.teachers import AnchoredTeacher

            scale = fidelity_scale or getattr(getattr(self.model, "generator", None), "scale", None) or 4
            self.fidelity_teacher = AnchoredTeacher(fidelity_teacher, scale)  # only its image x_f is used, not bound

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        h = self.hparams
        self.model = model_from_checkpoint(checkpoint, h.pretrained, h.osediff_lora).to(self.device)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """The weights were loaded with the model in :meth:`on_load_checkpoint`."""
        return None

    def _need_model(self) -> None:
        if self.model is None:
            raise RuntimeError("no model: give --ckpt_path or --model.init_args.model_path")

    def forward(self, x_lr: torch.Tensor, t=None) -> torch.Tensor:
        self._need_model()
        return self.model(x_lr, t)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        """Measured by the ``TSweepEvaluation`` callback."""
        self._need_model()

    validation_step = test_step

    def predict_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        """SR at ``t`` (B, 3, 4h, 4w) for any LR size (padded to the model's alignment, cropped back)."""
        from ctsr.callbacks.t_sweep import sweep_images

        self._need_model()
        t = float(self.model.default_t if self.hparams.t is None else self.hparams.t)
        return sweep_images(self, batch["lr"], [t])[t]
