"""Stage 2 of CTSR: controllability distillation (paper §4.4, Algorithm 2; DESIGN §6)."""
from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn

from ctsr.diffusion.control_rule import ControlPath, ControlRule, Objective
from ctsr.errors import check
from ctsr.lit.common import LoRACheckpointMixin, adamw
from ctsr.lit.prompting import GroundTruthPrompts
from ctsr.losses.stage2 import T_SAMPLERS, TEACHER_INPUTS, TeacherInput, TSampler, stage2_terms
from ctsr.models.control import ControllableSR, read_stage1_lora
from ctsr.models.generator import OneStepGenerator
from ctsr.models.teachers import AnchoredTeacher


# what must be the same in stage 2's generator as in the stage-1 run, or T_S is not the stage-1 network
STAGE1_KEYS = ("lora_rank", "vae_lora_rank", "lora_alpha", "train_conv_in", "unet_training", "generator_timestep",
               "scale")


def check_stage1_fits(stage1: dict, generator: dict, path: str) -> None:
    """Refuse a stage-2 generator whose LoRA ranks, scaling or ``conv_in`` training differ from the stage-1 run's
    (stage-1 files written before ``lora_alpha``/``train_conv_in`` existed used alpha = rank and a frozen conv_in)."""
    if not stage1:
        return
    saved = OneStepGenerator.complete_config(stage1)
    mode = lambda cfg: (cfg.get("prompting") or {}).get("mode", "fixed")  # noqa: E731 (per-image prompts or not)
    check(mode(saved) == mode(generator), "model.generator.prompting",
          f"the stage-1 checkpoint '{path}' was trained with prompting mode {mode(saved)}, this config has "
          f"{mode(generator)} (stack the same prompting override on stage 2)")
    bad = [k for k in STAGE1_KEYS if k in saved and k in generator and saved[k] != generator[k]]
    check(not bad, "model.generator",
          f"the stage-1 checkpoint '{path}' was trained with " + ", ".join(f"{k}={saved[k]}" for k in bad)
          + "; this config has " + ", ".join(f"{k}={generator[k]}" for k in bad)
          + " (set them as in the stage-1 run)")


class ControllabilityDistillation(GroundTruthPrompts, LoRACheckpointMixin, L.LightningModule):
    """Trains the student ε_S so that ``ControllableSR``'s z(t) follows the control path, evaluated where it is
    trained (:mod:`ctsr.losses.stage2`): by default the endpoint objective ‖ε_S(z0, τ_c) − (z_f − z0)‖², so that
    z(t) = z0 + t·ε_S(z0, τ_c) — t = 0 the stage-1 output (realness end), t = 1 the fidelity teacher's latent.

    ``path``, ``objective``, ``tau_max``, ``tau_c`` and ``control_steps`` make the model's
    :class:`~ctsr.diffusion.control_rule.ControlRule` (validated there; what the loss trains and the exported model
    evaluates).

    Args:
        generator: the same generator config as stage 1 (base model, OSEDiff file, ranks, prompt).
        stage1_ckpt: the stage-1 checkpoint (``.ckpt`` or exported ``.safetensors``) whose LoRA becomes T_S.
            None only for tests: T_S is then the generator as built.
        fidelity_teacher: the anchor z_f of the ``fidelity`` path (an ``AnchoredTeacher``).
        path: ``fidelity`` (default; straight to z_f), ``noise`` (eq. 5–6 literally) or ``denoise``.
        objective: ``endpoint`` (default: the toy lab's choice, trained where evaluated, one velocity for all t on
            the fidelity path) or ``eq8`` (the paper's loss, for reproduction; inference integrates with Euler steps).
        teacher_input: eq8 only: ``z0`` (eq. 8) or ``path`` (Algorithm 2: the teacher sees z_t and z_t').
        tau_max: τ(t) = t·tau_max (curved paths and eq8).
        tau_c: the endpoint objective's fixed timestep on the fidelity path (the student is queried at (z0, τ_c)).
        t_sampler: eq8 only: ``order`` (t, t' the order statistics of two uniforms, as the paper; t has density
            2(1 − t)) or ``uniform`` (t ~ U(0, 1), t' ~ U(t, 1): t near 1 trained as often as near 0).
        control_rank: rank of the student's fresh LoRA.
        control_steps: eq8 only: K of the inference's Euler integration.
        lr, betas, weight_decay: AdamW on the control LoRA only.
        seed: seed of the t / noise draws (offset per rank).
        init_from: start the control LoRA from these weights (a stage-2 ``.ckpt`` or an exported model file;
            ``mini``: the shipped mini-world model), e.g. to fine-tune a released model; the optimiser starts fresh.
    """

    def __init__(
        self,
        generator: OneStepGenerator,
        stage1_ckpt: str | None,
        fidelity_teacher: AnchoredTeacher | None = None,
        path: ControlPath = "fidelity",
        objective: Objective = "endpoint",
        teacher_input: TeacherInput = "z0",
        tau_max: float = 999.0,
        tau_c: float = 0.0,
        t_sampler: TSampler = "order",
        control_rank: int = 4,
        control_steps: int = 1,
        lr: float = 5e-5,
        betas: tuple[float, float] = (0.9, 0.999),
        weight_decay: float = 1e-2,
        seed: int = 0,
        init_from: str | None = None,
    ) -> None:
        super().__init__()
        # the control rule: validated by ControlRule, its errors naming this module's YAML keys
        rule = ControlRule.checked("model.", path=path, objective=objective, tau_max=tau_max, tau_c=tau_c,
                                   control_steps=control_steps)
        check(teacher_input in TEACHER_INPUTS, "model.teacher_input", f"must be z0 or path, got {teacher_input!r}")
        check(objective == "eq8" or teacher_input == "z0", "model.teacher_input",
              "'path' (Algorithm 2) is an option of objective eq8; the endpoint objective reads the teacher at z0")
        check(t_sampler in T_SAMPLERS, "model.t_sampler", f"must be order or uniform, got {t_sampler!r}")
        check(path != "fidelity" or fidelity_teacher is not None, "model.fidelity_teacher",
              "the fidelity path needs a fidelity teacher (an AnchoredTeacher)")
        check(lr > 0, "model.lr", f"must be > 0, got {lr}")
        self.save_hyperparameters(ignore=["generator", "fidelity_teacher"])
        stage1 = None
        if stage1_ckpt:
            stage1, stage1_config = read_stage1_lora(stage1_ckpt)
            check_stage1_fits(stage1_config, generator.config, stage1_ckpt)
        else:
            rank_zero_warn("stage1_ckpt is null: T_S is the generator as built (no stage-1 weights)")
        self.model = ControllableSR.from_stage1(generator, stage1, control_rank=control_rank, rule=rule)
        if init_from:
            from ctsr.models.control import load_into, read_control_lora
            from ctsr.models.sources import resolve_model_spec

            load_into(self.model.generator.unet, read_control_lora(resolve_model_spec(init_from)), "init_from")
        self.fidelity_teacher = fidelity_teacher
        if fidelity_teacher is not None:
            fidelity_teacher.requires_grad_(False)
            fidelity_teacher.bind(generator)
        generator.prompts.release()

    @property
    def generator(self) -> OneStepGenerator:
        return self.model.generator

    def stage2_terms(self, x_lr: torch.Tensor, generator: torch.Generator | None = None,
                     record=None) -> dict[str, torch.Tensor]:
        """The stage-2 loss of one batch (:func:`ctsr.losses.stage2.stage2_terms`, shared with the toy lab), for the
        model's control rule."""
        h = self.hparams
        z_f = self.fidelity_teacher.condition(x_lr) if self.model.rule.path == "fidelity" else None
        return stage2_terms(self.model, x_lr, generator, teacher_input=h.teacher_input, t_sampler=h.t_sampler,
                            z_f=z_f, schedule=self.generator.schedule, record=record)

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
        checkpoint["ctsr_control"] = self.model.rule.to_dict()

    def configure_optimizers(self):
        h = self.hparams
        return adamw(self.model.parameters(), h.lr, h.betas, h.weight_decay)
