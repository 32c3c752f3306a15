"""Stage 1 of CTSR: dual-teacher fidelity–realness distillation (paper §4.3, Algorithm 1; DESIGN §5)."""
from __future__ import annotations

from typing import Literal

import lightning as L
import torch

from ctsr.errors import check_finite_values
from ctsr.lit.common import LoRACheckpointMixin, adamw, check_optimizer
from ctsr.lit.prompting import GroundTruthPrompts
from ctsr.losses.perceptual import FrozenLPIPS
from ctsr.losses.stage1 import DualTeacherLoss, Stage1Weights
from ctsr.models.generator import OneStepGenerator
from ctsr.models.teachers import Teacher, UNetTeacher


class DualTeacherDistillation(GroundTruthPrompts, LoRACheckpointMixin, L.LightningModule):
    """Trains the one-step generator with L_s1 = L_rec + λ_fl·L_fl + λ_rn·L_rn.

    Args:
        generator: the student G (SD 2.1-base + OSEDiff LoRA + a fresh trainable LoRA).
        fidelity_teacher: T_f, e.g. an ``AnchoredTeacher`` around ResShift/SwinIR/Real-ESRGAN.
        realness_teacher: T_r; None (default) = a frozen copy of the student's initial weights (OSEDiff), the
            paper's "same model for the realness teacher and the student" (DESIGN §5).
        lambda_l2, lambda_lp: reconstruction weights (eq. 1).
        lambda_fl, lambda_rn: distillation weights (eq. 4).
        gamma_time: weight of the teacher's consistency term between noised SR and noised GT (eq. 2–3).
        tau_min, tau_max: the distillation timestep range, τ ~ U{τ_min … τ_max} per sample.
        lpips_weights: ``pretrained`` LPIPS-VGG (the paper), or ``random`` (tiny smoke runs only).
        lr, betas, weight_decay: AdamW on the LoRA parameters only.
        seed: seed of the τ / noise generator (offset per rank).
        init_from: start from these stage-1 weights instead of the generator as built (a stage-1 ``.ckpt`` or an
            exported model file's ``stage1.*``; ``mini``: the shipped mini-world model), e.g. to fine-tune a released
            model; the optimiser starts fresh. The default realness teacher is then a frozen copy of them.
    """

    def __init__(
        self,
        generator: OneStepGenerator,
        fidelity_teacher: Teacher,
        realness_teacher: Teacher | None = None,
        lambda_l2: float = 1.0,
        lambda_lp: float = 2.0,
        lambda_fl: float = 2.0,
        lambda_rn: float = 1.0,
        gamma_time: float = 5.5,
        tau_min: int = 20,
        tau_max: int = 979,
        lpips_weights: Literal["pretrained", "random"] = "pretrained",
        lr: float = 5e-5,
        betas: tuple[float, float] = (0.9, 0.999),
        weight_decay: float = 1e-2,
        seed: int = 0,
        init_from: str | None = None,
    ) -> None:
        super().__init__()
        check_finite_values("model", {"lambda_l2": lambda_l2, "lambda_lp": lambda_lp, "lambda_fl": lambda_fl,
                                      "lambda_rn": lambda_rn, "gamma_time": gamma_time})
        check_optimizer(lr, betas, weight_decay)
        self.save_hyperparameters(ignore=["generator", "fidelity_teacher", "realness_teacher"])
        self.generator = generator
        if init_from:
            from ctsr.models.control import load_into, read_stage1_lora
            from ctsr.models.export import resolve_model_spec

            load_into(generator, read_stage1_lora(resolve_model_spec(init_from))[0], "init_from")
        if realness_teacher is None:
            realness_teacher = UNetTeacher.frozen_copy(generator.unet)
        self.fidelity_teacher = fidelity_teacher
        self.realness_teacher = realness_teacher
        for teacher in (fidelity_teacher, realness_teacher):
            teacher.requires_grad_(False)
            teacher.bind(generator)
        weights = Stage1Weights(lambda_l2, lambda_lp, lambda_fl, lambda_rn, gamma_time)
        perceptual = FrozenLPIPS(lpips_weights) if lambda_lp > 0 else None
        self.objective = DualTeacherLoss(weights, tau_min, tau_max, perceptual)
        generator.prompts.release()  # every prompt embedding needed is cached now

    def teachers(self) -> dict[str, Teacher]:
        return {"fl": self.fidelity_teacher, "rn": self.realness_teacher}

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        gen = self.noise_generator(batch["hr"].device, self.hparams.seed)
        out = self.objective(self.generator, self.teachers(), batch["lr"], batch["hr"], gen)
        logs = {f"train/{k}": v.detach() for k, v in out.items() if k.startswith("loss_") or k == "tau_mean"}
        self.log_dict(logs, batch_size=batch["hr"].shape[0])
        self.log("train/loss", out["loss"].detach(), prog_bar=True, batch_size=batch["hr"].shape[0])
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None and hasattr(datamodule, "skipped"):
            self.log("data/skipped_files", float(len(datamodule.skipped)), batch_size=1)
        return out["loss"]

    def forward(self, x_lr: torch.Tensor) -> torch.Tensor:
        """SR image (B,3,4h,4w) in [0,1] of x_LR (B,3,h,w) in [0,1]."""
        return self.generator(x_lr)[0]

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        """Evaluation lives in the ``TSweepEvaluation`` callback (metrics, grids, tables): nothing to do here."""

    test_step = validation_step

    def predict_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self(batch["lr"])

    def configure_optimizers(self):
        h = self.hparams
        return adamw(self.generator.parameters(), h.lr, h.betas, h.weight_decay)
