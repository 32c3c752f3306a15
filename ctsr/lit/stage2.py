"""Stage 2 of CTSR: controllability distillation (paper §4.4, Algorithm 2; DESIGN §6)."""
from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn

from ctsr.errors import check
from ctsr.lit.common import LoRACheckpointMixin, adamw
from ctsr.losses.stage2 import Path, TeacherInput, control_loss, control_targets, sample_t_pairs
from ctsr.models.control import ControllableSR, read_stage1_lora
from ctsr.models.generator import OneStepGenerator
from ctsr.models.teachers import AnchoredTeacher


class ControllabilityDistillation(LoRACheckpointMixin, L.LightningModule):
    """Trains ε_S so that z(t) = z0 + t·ε_S(z0, τ(t), c) follows the control path (eq. 8).

    Args:
        generator: the same generator config as stage 1 (base model, OSEDiff file, ranks, prompt).
        stage1_ckpt: the stage-1 checkpoint (``.ckpt`` or exported ``.safetensors``) whose LoRA becomes T_S.
            None only for tests: T_S is then the generator as built.
        fidelity_teacher: the anchor z_f of the ``fidelity`` path (an ``AnchoredTeacher``).
        path: ``fidelity`` (default; straight to z_f), ``noise`` (eq. 5–6 literally) or ``denoise``.
        teacher_input: ``z0`` (eq. 8) or ``path`` (Algorithm 2: the teacher sees z_t and z_t').
        tau_max: τ(t) = t·tau_max.
        control_rank: rank of the student's fresh LoRA.
        control_steps: K of the inference integration (1: the paper's rule).
        lr, betas, weight_decay: AdamW on the control LoRA only.
        seed: seed of the t / noise draws (offset per rank).
    """

    def __init__(
        self,
        generator: OneStepGenerator,
        stage1_ckpt: str | None,
        fidelity_teacher: AnchoredTeacher | None = None,
        path: Path = "fidelity",
        teacher_input: TeacherInput = "z0",
        tau_max: float = 999.0,
        control_rank: int = 4,
        control_steps: int = 1,
        lr: float = 5e-5,
        betas: tuple[float, float] = (0.9, 0.999),
        weight_decay: float = 1e-2,
        seed: int = 0,
    ) -> None:
        super().__init__()
        check(path in ("fidelity", "noise", "denoise"), "model.path", f"must be fidelity, noise or denoise, got {path!r}")
        check(teacher_input in ("z0", "path"), "model.teacher_input", f"must be z0 or path, got {teacher_input!r}")
        check(path != "fidelity" or fidelity_teacher is not None, "model.fidelity_teacher",
              "the fidelity path needs a fidelity teacher (an AnchoredTeacher)")
        check(lr > 0, "model.lr", f"must be > 0, got {lr}")
        self.save_hyperparameters(ignore=["generator", "fidelity_teacher"])
        stage1 = None
        if stage1_ckpt:
            stage1, _ = read_stage1_lora(stage1_ckpt)
        else:
            rank_zero_warn("stage1_ckpt is null: T_S is the generator as built (no stage-1 weights)")
        self.model = ControllableSR.from_stage1(
            generator, stage1, control_rank=control_rank, tau_max=tau_max, control_steps=control_steps
        )
        self.fidelity_teacher = fidelity_teacher
        if fidelity_teacher is not None:
            fidelity_teacher.requires_grad_(False)
            fidelity_teacher.bind(generator)
        generator.prompts.release()

    @property
    def generator(self) -> OneStepGenerator:
        return self.model.generator

    def stage2_terms(self, x_lr: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        h = self.hparams
        z0 = self.model.z0(x_lr)                                        # G_TS(x_LR), no grad
        t, t2 = sample_t_pairs(z0.shape[0], generator, z0.device)
        z_f = self.fidelity_teacher.condition(x_lr) if h.path == "fidelity" else None
        p_t, p_t2, z_t = control_targets(
            h.path, z0, t, t2, h.teacher_input, teacher_eps=self.model.teacher_eps, z_f=z_f,
            tau_max=h.tau_max, schedule=self.generator.schedule,
        )
        eps_s = self.model.velocity(z_t, t * h.tau_max)                 # ε_S(z_t, τ(t), c)
        loss = control_loss(p_t, p_t2, eps_s, t2 - t)
        return {"loss": loss, "t_mean": t.mean(), "delta_mean": (t2 - t).mean()}

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        out = self.stage2_terms(batch["lr"], self.noise_generator(batch["lr"].device, self.hparams.seed))
        b = batch["lr"].shape[0]
        self.log("train/loss_ctrl", out["loss"].detach(), prog_bar=True, batch_size=b)
        self.log_dict({"train/t_mean": out["t_mean"], "train/delta_mean": out["delta_mean"]}, batch_size=b)
        return out["loss"]

    def forward(self, x_lr: torch.Tensor, t=0.0) -> torch.Tensor:
        return self.model(x_lr, t)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        """Evaluation lives in the ``TSweepEvaluation`` callback (metrics, grids, tables): nothing to do here."""

    test_step = validation_step

    def predict_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self(batch["lr"], 0.0)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["ctsr_stage1_lora"] = self.model.stage1_lora
        checkpoint["ctsr_control"] = {"tau_max": self.model.tau_max, "control_steps": self.model.control_steps}

    def configure_optimizers(self):
        h = self.hparams
        return adamw(self.model.parameters(), h.lr, h.betas, h.weight_decay)
