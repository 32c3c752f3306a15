"""The controllable CTSR model (DESIGN §6), its export as stage-1 LoRA + stage-2 LoRA in safetensors, and the
loaders of every trained file (:func:`load_model`: an exported ``.safetensors``, a stage-1 or stage-2 ``.ckpt``, a
run folder, a CTSR folder or Hub id through :mod:`ctsr.models.sources`).

Structure: one UNet with the stage-1 LoRA merged in (T_S) and a fresh ``control`` adapter (the student S); the
VAE encoder keeps its stage-1 adapter (frozen). For x_LR and a control value t ∈ [0, 1] per sample,
z0 = G_TS(x_LR) (UNet with the control adapter off), x = D(z(t)/s), and z(t) is evaluated exactly where the
stage-2 objective trained the student (:mod:`ctsr.losses.stage2`), by the model's
:class:`~ctsr.diffusion.control_rule.ControlRule`:

    endpoint, fidelity path   z(t) = z0 + t·v,  v = ε_S(z0, τ_c)        one velocity for every t
    endpoint, curved path     z(t) = z0 + t·ε_S(z0, τ(t))               one pass per t
    eq8 (K steps, Euler)      z_{k+1} = z_k + (t/K)·ε_S(z_k, τ(t_k)),  t_k = k·t/K   (K = 1: τ(0), one velocity)

τ(t) = t·tau_max. t = 0 is the realness end (the stage-1 output, one UNet pass), t = 1 the fidelity end.
Files written before the objective was recorded (format v1 without ``objective``) load as ``eq8`` with the rule
they were exported with, ``tau_rule = "next"`` (z_{k+1} = z_k + (t/K)·ε_S(z_k, τ(t_{k+1}))), and reproduce their
previous outputs.
"""
from __future__ import annotations

import copy
import json
import math
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import torch
from torch import Tensor, nn

from ctsr.checkpoints import (
    atomic_write_files,
    json_meta,
    load_checkpoint,
    read_safetensors,
    require_finite,
    require_float_weights,
)
from ctsr.diffusion.control_rule import ControlRule
from ctsr.diffusion.schedule import GENERATOR_TIMESTEP, tau_of_t
from ctsr.errors import ConfigError, CTSRError, MissingWeightsError, check, describe, shown
from ctsr.models.generator import OneStepGenerator
from ctsr.models.lora import UNET_TARGETS, add_lora, merge_and_remove_lora
from ctsr.models.sources import parse_hub_id, resolve_folder, resolve_model_spec, weights_file

CONTROL = "control"
FORMAT = "ctsr-controllable-v1"


def read_stage1_lora(path: str | Path) -> tuple[dict[str, Tensor], dict]:
    """The stage-1 generator's LoRA tensors (keys relative to the generator) and its config, from a stage-1
    Lightning checkpoint (``.ckpt``, read with ``weights_only=True``: no code in it runs) or an exported
    ``.safetensors`` file; refused, naming the file, when unreadable or holding non-finite weights."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingWeightsError(f"stage-1 checkpoint '{path}' not found (a runs/<name>/checkpoints/*.ckpt of "
                                  f"`ctsr fit --config experiments/stage1.yaml`, or an exported .safetensors)")
    if path.suffix == ".safetensors":
        tensors, meta = read_safetensors(path, "stage1_ckpt")
        weights = {k[len("stage1."):]: v for k, v in tensors.items() if k.startswith("stage1.")}
        config = json_meta(meta, "generator", path, default={})
    else:
        ckpt = load_checkpoint(path, "stage1_ckpt")
        state = ckpt.get("state_dict", {})
        state = state if isinstance(state, dict) else {}
        # the checkpoint holds the trainable weights only: the LoRA and, as OSEDiff trains it, the UNet's conv_in
        weights = {k[len("generator."):]: v for k, v in state.items() if k.startswith("generator.")}
        config = ckpt.get("ctsr_generator_config", {})
    if not weights:
        raise ConfigError(f"stage1_ckpt: '{shown(path)}' holds no generator LoRA weights (is it a stage-1 checkpoint?)")
    require_float_weights(weights, path, "stage-1 weights")
    return weights, config


def read_control_lora(path: str | Path) -> dict[str, Tensor]:
    """The stage-2 control LoRA (keys relative to the UNet) of a stage-2 ``.ckpt`` or an exported model file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingWeightsError(f"stage-2 weights '{path}' not found (a stage-2 checkpoint or an exported model)")
    if path.suffix == ".safetensors":
        tensors, _ = read_safetensors(path, "stage-2 weights")
        weights = {k[len("stage2.unet."):]: v for k, v in tensors.items() if k.startswith("stage2.unet.")}
    else:
        state = load_checkpoint(path, "stage-2 weights").get("state_dict", {})
        prefix = "model.generator.unet."
        weights = {k[len(prefix):]: v for k, v in (state if isinstance(state, dict) else {}).items()
                   if k.startswith(prefix) and f".{CONTROL}." in k}
    if not weights:
        raise ConfigError(f"'{path}' holds no stage-2 control weights (is it a stage-2 checkpoint or model file?)")
    require_float_weights(weights, path, "stage-2 weights")
    return weights


def load_into(module: nn.Module, weights: dict[str, Tensor], what: str) -> None:
    own = dict(module.named_parameters())
    missing = [k for k in own if "lora_" in k and own[k].requires_grad and k not in weights]
    unknown = [k for k in weights if k not in own]
    if unknown or missing:
        example = (unknown or missing)[0]
        raise ConfigError(f"{what}: weights do not fit this model (e.g. '{example}'); same lora ranks and model?")
    for k, v in weights.items():
        if own[k].shape != v.shape:
            raise ConfigError(f"{what}: '{k}' has shape {tuple(v.shape)}, the model {tuple(own[k].shape)}")
    with torch.no_grad():
        for k, v in weights.items():
            own[k].copy_(v)


def _rule_option(name: str) -> property:
    """``model.<name>``: the option of ``model.rule``; setting it replaces the rule with a validated copy."""
    return property(lambda self: getattr(self.rule, name),
                    lambda self, value: setattr(self, "rule", self.rule.replace(**{name: value})),
                    doc=f"``rule.{name}`` (:class:`~ctsr.diffusion.control_rule.ControlRule`).")


class ControllableSR(nn.Module):
    """The model users run. Build it from a stage-1 generator with :meth:`from_stage1`.

    Args:
        generator: a ``OneStepGenerator`` whose UNet holds T_S (stage-1 LoRA merged) and a ``control`` adapter.
        rule: how the student was trained, hence how it is evaluated (objective, path, τ_max, τ_c, K, τ rule; module
            docstring); default :class:`ControlRule`'s defaults. Its options read (and set) as attributes too:
            ``model.tau_c``, ``model.control_steps = 2``.
    """

    supports_control = True
    tau_max = _rule_option("tau_max")
    control_steps = _rule_option("control_steps")
    objective = _rule_option("objective")
    path = _rule_option("path")
    tau_c = _rule_option("tau_c")
    tau_rule = _rule_option("tau_rule")

    def __init__(self, generator: OneStepGenerator, rule: ControlRule | None = None):
        super().__init__()
        self.generator = generator
        self.rule = ControlRule() if rule is None else rule
        self.stage1_lora: dict[str, Tensor] = {}  # kept (unmerged, small) for export
        self.selected_t: float | None = None      # the t chosen on a validation split (`ctsr select-t`), if any
        self.selected_t_record: dict = {}         # its rule, split and scores, kept through a re-export
        self.source: dict | None = None           # the training run it comes from: {"run", "path", "stage", "step"}
        # after split_networks() (inference): generator.unet is T_S alone and student_unet the student S
        self.networks_split = False
        self.student_unet: nn.Module | None = None

    @property
    def default_t(self) -> float:
        """The t used when none is given: the recorded ``selected_t`` (``ctsr select-t``), else 0 (the realness
        end). ``model(x)``, ``ctsr upscale``, the demo and ``ctsr test`` all start from it."""
        return 0.0 if self.selected_t is None else float(self.selected_t)

    @property
    def control_config(self) -> dict:
        """What rebuilds the control rule (stored in checkpoints and exported files): ``rule.to_dict()``."""
        return self.rule.to_dict()

    @classmethod
    def from_stage1(
        cls, generator: OneStepGenerator, stage1_lora: dict[str, Tensor] | None = None, control_rank: int = 4,
        rule: ControlRule | None = None,
    ) -> "ControllableSR":
        """Load the stage-1 LoRA into ``generator``, merge its UNet part (T_S), freeze everything, add ``control``."""
        check(control_rank >= 1, "control_rank", f"must be ≥ 1, got {control_rank}")
        if stage1_lora:
            load_into(generator, stage1_lora, "stage1_ckpt")
        generator.requires_grad_(False)
        merge_and_remove_lora(generator.unet)   # T_S: stage-1 UNet weights, plain modules
        add_lora(generator.unet, control_rank, UNET_TARGETS, CONTROL)
        for n, p in generator.unet.named_parameters():
            p.requires_grad_(f"lora_A.{CONTROL}" in n or f"lora_B.{CONTROL}" in n)
        model = cls(generator, rule)
        model.stage1_lora = {k: v.detach().cpu().clone() for k, v in (stage1_lora or {}).items()}
        return model

    # -- the two networks in one UNet (or two, once split) ---------------------------------------------------------
    @contextmanager
    def _as_teacher(self) -> Iterator[None]:
        """Within the block ``generator.unet`` is T_S: its control adapter off (nothing to switch once split)."""
        if self.networks_split:
            yield
            return
        self.generator.unet.disable_adapters()
        try:
            yield
        finally:
            self.generator.unet.enable_adapters()

    def teacher_eps(self, z: Tensor, tau: Tensor) -> Tensor:
        """ε_TS(z, τ): the frozen stage-1 UNet (control adapter off), no gradient."""
        with torch.no_grad(), self._as_teacher():
            return self.generator.eps(z, tau)

    def velocity(self, z: Tensor, tau: Tensor) -> Tensor:
        """ε_S(z, τ): the student (control adapter on; ``student_unet`` once split)."""
        if self.student_unet is None:
            return self.generator.eps(z, tau)
        return self.generator.eps(z, tau, unet=self.student_unet)

    @torch.no_grad()
    def z0(self, x_lr: Tensor) -> Tensor:
        """The stage-1 output latent G_TS(x_LR): (B,3,h,w) in [0,1] → (B,4,h/2,w/2). Deterministic (the encoder's
        mode, also in training): T_S is a frozen teacher, and a sampled z0 would add noise the student cannot fit."""
        with self._as_teacher():
            return self.generator.latent(x_lr, sample=False)

    def split_networks(self) -> None:
        """For inference, in place and once: the control adapter becomes two plain UNets — T_S in ``generator.unet``
        (the adapter dropped: what ``z0`` runs with it off) and the student S in ``student_unet`` (the adapter
        merged into a copy: what the control step runs with it on) — and the VAE encoder's stage-1 LoRA is merged.
        A LoRA left unmerged costs two extra small matmuls in each of ~700 layers on every pass; two plain UNets
        cost 1.7 GB more (bf16) and run exactly the bare diffusers graph. ``z0``, ``velocity``,
        ``controlled_latent`` and ``sweep`` then run on the two networks; a model without control keeps T_S only.
        Training and export need the adapter: split a model only to run it."""
        gen = self.generator
        if getattr(gen.vae, "_hf_peft_config_loaded", False):
            merge_and_remove_lora(gen.vae)
        if getattr(gen.unet, "_hf_peft_config_loaded", False):
            if self.supports_control:
                self.student_unet = merge_and_remove_lora(copy.deepcopy(gen.unet))  # S = T_S + control LoRA
            with torch.no_grad():
                for name, p in gen.unet.named_parameters():
                    if "lora_B" in name:
                        p.zero_()                                                   # ΔW = B·A = 0: T_S exact
            merge_and_remove_lora(gen.unet)
        self.networks_split = True

    # -- control ------------------------------------------------------------------------------------------------
    def _check_t(self, t, batch: int, device) -> Tensor:
        t = torch.as_tensor(t, dtype=torch.float32, device=device).reshape(-1)
        if t.numel() == 1:
            t = t.expand(batch)
        if t.numel() != batch:
            raise ValueError(f"t: {t.numel()} values for a batch of {batch}")
        bad = t[(t < 0) | (t > 1) | ~torch.isfinite(t)]
        if bad.numel():
            raise ValueError(f"t must lie in [0, 1] (0 = realness end, 1 = fidelity end), got {bad.tolist()}")
        return t

    @property
    def constant_velocity(self) -> bool:
        """True when z(t) = z0 + t·v with one v for every t (:attr:`ControlRule.constant_velocity`)."""
        return self.rule.constant_velocity

    def velocity_tau(self, batch: int, device) -> Tensor:
        """The timestep of the one velocity (``constant_velocity`` models): τ_c, or τ(0) = 0 for eq8 with K = 1."""
        return torch.full((batch,), self.rule.velocity_tau, dtype=torch.float32, device=device)

    def control_velocity(self, z0: Tensor) -> Tensor:
        """v with z(t) = z0 + t·v for every t: one student pass (``constant_velocity`` models only)."""
        if not self.constant_velocity:
            raise ValueError(f"this model's velocity depends on t (objective {self.objective}, path {self.path}, "
                             f"K = {self.control_steps}); use controlled_latent")
        return self.velocity(z0, self.velocity_tau(z0.shape[0], z0.device))

    @staticmethod
    def move(z0: Tensor, v: Tensor, t: Tensor) -> Tensor:
        """z0 + t·v, with t (B,)."""
        return z0 + t.reshape(-1, *([1] * (z0.ndim - 1))).to(z0.dtype) * v

    def controlled_latent(self, z0: Tensor, t, velocity: Tensor | None = None) -> Tensor:
        """z(t) from z0 (B,4,h,w); ``t`` a float or (B,) per sample. ``velocity``: a ``control_velocity(z0)``
        computed before (``constant_velocity`` models), so that a sweep over t costs no further UNet pass."""
        t = self._check_t(t, z0.shape[0], z0.device)
        if not bool((t > 0).any()):
            return z0                                         # t = 0: the stage-1 output, no extra pass
        if self.constant_velocity:
            v = self.control_velocity(z0) if velocity is None else velocity
            return torch.where(t.reshape(-1, 1, 1, 1) > 0, self.move(z0, v, t), z0)
        rule = self.rule
        if rule.objective == "endpoint":                      # curved path: z0 + t·ε_S(z0, τ(t))
            z = self.move(z0, self.velocity(z0, tau_of_t(t, rule.tau_max)), t)
            return torch.where(t.reshape(-1, 1, 1, 1) > 0, z, z0)
        z, k_steps = z0, rule.control_steps                   # eq8: Euler steps along the learned field
        for k in range(k_steps):
            t_index = t * (k + 1 if rule.tau_rule == "next" else k) / k_steps
            step = (t / k_steps).reshape(-1, 1, 1, 1).to(z.dtype)
            z = z + step * self.velocity(z, tau_of_t(t_index, rule.tau_max))
        return torch.where(t.reshape(-1, 1, 1, 1) > 0, z, z0)

    def forward(self, x_lr: Tensor, t=None) -> Tensor:
        """x_LR (B,3,h,w) in [0,1], t ∈ [0,1] (float or per sample; None: :attr:`default_t`, the recorded
        ``selected_t`` or 0) → SR (B,3,4h,4w) in [0,1]."""
        z = self.controlled_latent(self.z0(x_lr), self.default_t if t is None else t)
        return (self.generator.decode(z) + 1) / 2

    @torch.no_grad()
    def sweep(self, x_lr: Tensor, ts: Sequence[float]) -> list[Tensor]:
        """SR images for every t in ``ts``: z0 once, and the velocity once when it does not depend on t (then a
        sweep of any length costs two UNet passes and one decode per t)."""
        z0 = self.z0(x_lr)
        v = self.control_velocity(z0) if self.constant_velocity and any(float(t) > 0 for t in ts) else None
        return [(self.generator.decode(self.controlled_latent(z0, t, v)) + 1) / 2 for t in ts]

    # -- export / import ------------------------------------------------------------------------------------------
    def control_lora(self) -> dict[str, Tensor]:
        return {k: v.detach().cpu() for k, v in self.generator.unet.state_dict().items() if f".{CONTROL}." in k}

    def export(self, path: str | Path, dtype: torch.dtype | None = None) -> Path:
        """One safetensors file: ``stage1.*`` (generator LoRA, unmerged), ``stage2.unet.*`` (control LoRA) and the
        metadata that rebuilds the model (base model id, OSEDiff file, ranks, prompt, τ_max, K). ``dtype``: store
        the floating-point tensors in it (``torch.float16`` halves the file; :meth:`load` reads them back into
        float32 weights). Written atomically (``.<name>.tmp-<pid>`` in the same folder, then renamed): a full disk
        or a kill never leaves a partial model file, and an ``OSError`` is one :class:`OutputError` line."""
        from safetensors.torch import save

        tensors = {f"stage1.{k}": v.contiguous() for k, v in self.stage1_lora.items()}
        tensors.update({f"stage2.unet.{k}": v.contiguous() for k, v in self.control_lora().items()})
        if dtype is not None:
            tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
        rank = next(v.shape[0] for k, v in self.control_lora().items() if "lora_A" in k)
        meta = {
            "format": FORMAT,
            "generator": json.dumps(self.generator.config),
            "control": json.dumps({"rank": rank, **self.control_config}),
        }
        if self.selected_t is not None:
            meta["selected_t"] = json.dumps({**self.selected_t_record, "t": self.selected_t})
        if self.source:
            meta["source"] = json.dumps(self.source)
        path = Path(path)
        atomic_write_files([(path, save(tensors, metadata=meta))], "model file")
        return path

    @classmethod
    def from_pretrained(cls, repo_or_path: str, revision: str | None = None, **load_kwargs) -> "ControllableSR":
        """A CTSR model from the Hugging Face Hub (``owner/name``; its cache, ``HF_HUB_OFFLINE``, ``revision``) or
        a local folder in the same layout (the exported safetensors, ``config.json``, a model card):
        :func:`load_pretrained`. A recorded ``selected_t`` is the default t of ``model(x)``, said in one line on
        stderr."""
        import sys

        model = load_pretrained(repo_or_path, revision=revision, **load_kwargs)
        if model.selected_t is not None:  # one truth for t: model(x) runs at the recorded t, and says so once
            print(f"ctsr: {shown(repo_or_path)} records t = {model.selected_t:g} (`ctsr select-t`, rule "
                  f"{shown(model.selected_t_record.get('rule', '?'))}); model(x) uses it unless t is given",
                  file=sys.stderr)
        return model

    @classmethod
    def load(cls, path: str | Path, pretrained: str | None = None, osediff_lora: str | None = None,
             control_steps: int | None = None) -> "ControllableSR":
        """Rebuild from :meth:`export` without Lightning; ``pretrained``/``osediff_lora`` override the stored
        locations (the file stores where the base weights were found at training time). The file is read once,
        as tensors only, and refused naming it when it is not a CTSR model file or holds non-finite weights."""
        path = Path(path).expanduser()
        if not path.is_file():
            raise MissingWeightsError(f"CTSR model file '{path}' not found (write one with `ctsr export`)")
        tensors, meta = read_safetensors(path, "model file")
        gcfg, ccfg, selected = check_model_file(tensors, meta, path)
        generator = generator_from_config(gcfg, pretrained, osediff_lora, f"'{shown(path)}': metadata 'generator'")
        stage1 = {k[len("stage1."):]: v for k, v in tensors.items() if k.startswith("stage1.")}
        model = cls.from_stage1(generator, stage1, control_rank=ccfg["rank"],
                                rule=ControlRule.from_stored(ccfg, control_steps))
        control = {k[len("stage2.unet."):]: v for k, v in tensors.items() if k.startswith("stage2.unet.")}
        load_into(generator.unet, control, "stage-2 LoRA")
        if selected is not None:
            model.selected_t_record = selected
            model.selected_t = float(selected["t"])
        if "source" in meta:
            model.source = json_meta(meta, "source", path)
        return model.eval()


def check_model_file(tensors: dict[str, Tensor], meta: dict[str, str], path: str | Path
                     ) -> tuple[dict, dict, dict | None]:
    """An exported model file's (generator config, control config, ``selected_t`` record or None), checked before
    anything is built: CTSR metadata (size, nesting, every key and type: :func:`check_generator_config`,
    :func:`check_control_config`, :func:`check_selection`), LoRA ranks that match the file's tensors, the stage-2
    tensors, finite weights."""
    if meta.get("format") != FORMAT:
        raise ConfigError(f"'{shown(path)}' is not a CTSR model file (format {str(meta.get('format'))[:80]!r}; "
                          f"write one with `ctsr export`)")
    where = f"'{shown(path)}': metadata"
    generator, control = json_meta(meta, "generator", path), json_meta(meta, "control", path)
    check_generator_config(generator, f"{where} 'generator'")
    check_control_config(control, f"{where} 'control'")
    selected = json_meta(meta, "selected_t", path) if "selected_t" in meta else None
    if selected is not None:
        check_selection(selected, f"{where} 'selected_t'")
    if "source" in meta:
        json_meta(meta, "source", path)
    if not any(k.startswith("stage2.") for k in tensors):
        raise ConfigError(f"'{shown(path)}' lacks the stage-2 (control) LoRA tensors of a CTSR model file")
    stage1 = {k[len("stage1."):]: v for k, v in tensors.items() if k.startswith("stage1.")}
    control_lora = {k[len("stage2.unet."):]: v for k, v in tensors.items() if k.startswith("stage2.unet.")}
    check_lora_ranks(generator, stage1, control_lora, control["rank"], f"'{shown(path)}'")
    require_float_weights(tensors, path)
    return generator, control, selected


# -- what a stored config may hold (a file's metadata or a checkpoint's ctsr_* entries; docs/reliability.md) --------
MAX_CONTROL_STEPS = 1000   # K of eq8's control integration: K UNet passes per image and t
MAX_TEXT = 10_000          # characters of a stored prompt or location


def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _text(v) -> bool:
    return isinstance(v, str) and len(v) <= MAX_TEXT and "\x00" not in v


_GENERATOR_FIELDS = {  # key → (test, what it must be)
    "pretrained": (lambda v: _text(v) and v != "", "a model name, Hub id or folder"),
    "osediff_lora": (lambda v: v is None or _text(v), "a file name or null"),
    "lora_rank": (lambda v: _int(v) and v >= 1, "an integer ≥ 1"),
    "vae_lora_rank": (lambda v: _int(v) and v >= 0, "an integer ≥ 0"),
    "lora_alpha": (lambda v: _number(v) and v > 0, "a number > 0"),
    "train_conv_in": (lambda v: isinstance(v, bool), "true or false"),
    "prompt": (_text, f"a text of at most {MAX_TEXT} characters"),
    "latent_sampling": (lambda v: v in ("auto", "mode", "sample"), "auto, mode or sample"),
    "lr_upsample": (lambda v: v in ("torch", "pil"), "torch or pil"),
    "gradient_checkpointing": (lambda v: isinstance(v, bool), "true or false"),
    "seed": (_int, "an integer"),
    "unet_training": (lambda v: v in ("lora", "full"), "lora or full"),
    "generator_timestep": (lambda v: _number(v) and 0 <= v <= GENERATOR_TIMESTEP, f"a number in [0, {GENERATOR_TIMESTEP}]"),
    "scale": (lambda v: _int(v) and v in (1, 2, 4), "1, 2 or 4"),
    "prompting": (lambda v: _prompting(v), "null, fixed, dape, or the options of ctsr.models.prompting.Prompting "
                  "with a tagger no larger than the released RAM Swin-L (its files regular files)"),
}


def _prompting(value) -> bool:
    """A stored ``prompting``: None, a mode, or a mapping of plain options whose ``tagger`` (RAMTagger arguments,
    built when a prompt is first needed) is no larger than the released tagger and names regular files only (a
    crafted one could ask for a huge network, or read /dev/zero as its tag list). Its options are checked again by
    ``Prompting.parse``."""
    import inspect
    import os

    if value is None or value in ("fixed", "dape"):
        return True
    if not isinstance(value, dict) or not isinstance(value.get("tagger", {}), dict):
        return False
    if any(k != "tagger" and not (v is None or isinstance(v, (bool, int, float, str))) for k, v in value.items()):
        return False
    from ctsr.models.ram import RAMTagger

    defaults = {k: p.default for k, p in inspect.signature(RAMTagger.__init__).parameters.items() if k != "self"}
    for key, v in value.get("tagger", {}).items():
        if key not in defaults:
            return False
        d = defaults[key]
        if isinstance(d, bool):
            ok = isinstance(v, bool)
        elif isinstance(d, int):
            ok = _int(v) and 1 <= v <= d
        elif isinstance(d, float):
            ok = _number(v)
        elif isinstance(d, (tuple, list)):
            ok = (isinstance(v, (list, tuple)) and len(v) == len(d)
                  and all(_int(x) and 1 <= x <= y for x, y in zip(v, d)))
        else:  # a file (tag list, thresholds)
            ok = _text(v) and os.path.isfile(v)
        if not ok:
            return False
    return True
_CONTROL_FIELDS = {
    "rank": (lambda v: _int(v) and v >= 1, "an integer ≥ 1"),
    "tau_max": (lambda v: _number(v) and 0 < v <= GENERATOR_TIMESTEP, f"a number in (0, {GENERATOR_TIMESTEP}]"),
    "control_steps": (lambda v: _int(v) and 1 <= v <= MAX_CONTROL_STEPS, f"an integer in [1, {MAX_CONTROL_STEPS}]"),
    "objective": (lambda v: v in ("endpoint", "eq8"), "endpoint or eq8"),
    "path": (lambda v: v in ("fidelity", "noise", "denoise"), "fidelity, noise or denoise"),
    "tau_c": (lambda v: _number(v) and 0 <= v <= GENERATOR_TIMESTEP, f"a number in [0, {GENERATOR_TIMESTEP}]"),
    "tau_rule": (lambda v: v in ("euler", "next"), "euler or next"),
}


def _check_fields(cfg: dict, fields: dict, known: set[str], required: tuple[str, ...], where: str) -> None:
    unknown = sorted(str(k) for k in cfg if k not in known)
    if unknown:
        raise ConfigError(f"{where} has the unknown key '{shown(unknown[0])[:80]}' (written by a newer ctsr, or "
                          f"damaged: update ctsr, or export the model again)")
    for key in required:
        if key not in cfg:
            raise ConfigError(f"{where} lacks '{key}'")
    for key, value in cfg.items():
        test, what = fields.get(key, (lambda v: v is None or isinstance(v, (bool, int, float, str)), "a plain value"))
        if not test(value):
            shown_value = shown(repr(value))
            raise ConfigError(f"{where}: '{key}' must be {what}, got "
                              f"{shown_value[:60] + ' …' if len(shown_value) > 60 else shown_value}")


def check_generator_config(cfg: dict, where: str = "the generator config") -> None:
    """Refuse, in one line naming ``where`` and the key, a stored generator config with an unknown key or a value
    of the wrong type or range (before anything is built from it)."""
    import inspect

    if not isinstance(cfg, dict):
        raise ConfigError(f"{where} must be a mapping, got {type(cfg).__name__}")
    known = set(inspect.signature(OneStepGenerator.__init__).parameters) - {"self"}
    _check_fields(cfg, _GENERATOR_FIELDS, known, (), where)


def check_control_config(cfg: dict, where: str = "the control config", rank: bool = True) -> None:
    """As :func:`check_generator_config`, for the control rule (``rank`` required unless ``rank=False``: a
    checkpoint's rank is its tensors')."""
    if not isinstance(cfg, dict):
        raise ConfigError(f"{where} must be a mapping, got {type(cfg).__name__}")
    _check_fields(cfg, _CONTROL_FIELDS, set(_CONTROL_FIELDS), ("rank",) if rank else (), where)


def check_selection(selected: dict, where: str = "selected_t") -> None:
    """A ``selected_t`` record: a number ``t`` in [0, 1]."""
    t = selected.get("t")
    if not _number(t) or not 0 <= t <= 1:
        raise ConfigError(f"{where} lacks a number 't' in [0, 1] (got {shown(repr(t))[:40]})")


def _lora_ranks(weights: dict[str, Tensor], prefix: str) -> set[int]:
    return {int(v.shape[0]) for k, v in weights.items() if k.startswith(prefix) and ".lora_A." in k and v.ndim >= 1}


def check_lora_ranks(generator: dict, stage1: dict[str, Tensor], control: dict[str, Tensor] | None,
                     control_rank: int | None, name: str) -> None:
    """The ranks a config asks for must be those of the LoRA tensors the file holds: a crafted rank (10⁹) is
    refused before any layer is allocated (the layers' own widths bound the ranks too: :func:`ctsr.models.lora.
    add_lora`)."""
    checks = [("generator 'lora_rank'", generator.get("lora_rank", 4), _lora_ranks(stage1, "unet."),
               generator.get("unet_training", "lora") == "lora"),
              ("generator 'vae_lora_rank'", generator.get("vae_lora_rank", 4), _lora_ranks(stage1, "vae."), True)]
    if control is not None:
        checks.append(("control 'rank'", control_rank, _lora_ranks(control, ""), True))
    for what, rank, found, applies in checks:
        if applies and found and found != {rank}:
            raise ConfigError(f"{name}: {what} is {shown(repr(rank))[:40]}, but its LoRA tensors have rank "
                              f"{', '.join(map(str, sorted(found)))}: the file is damaged or crafted")


def generator_from_config(cfg: dict, pretrained: str | None = None, osediff_lora: str | None = None,
                          where: str = "the stored generator config") -> OneStepGenerator:
    """The generator a stored config describes; ``pretrained``/``osediff_lora`` override the stored locations
    (``osediff_lora=""``: none). Options that older files lack are filled with what they were trained with."""
    cfg = dict(cfg)
    if pretrained is not None:
        cfg["pretrained"] = pretrained
    if osediff_lora is not None:
        cfg["osediff_lora"] = osediff_lora or None
    check_generator_config(cfg, where)
    try:
        return OneStepGenerator.from_config(cfg)
    except MissingWeightsError as err:
        if pretrained is not None and osediff_lora is not None:
            raise
        raise MissingWeightsError(f"{err} (the locations {where} records; --pretrained and --osediff-lora give "
                                  f"others)") from None


# -- loading any trained file ------------------------------------------------------------------------------------
class Stage1Only(ControllableSR):
    """A stage-1 generator behind the controllable interface: t must be 0."""

    supports_control = False

    def controlled_latent(self, z0, t, velocity=None):
        t = self._check_t(t, z0.shape[0], z0.device)
        if bool((t > 0).any()):
            raise ValueError("this is a stage-1 model: only t = 0 is defined (train stage 2 for control)")
        return z0


def _generator(cfg: dict, pretrained: str | None, osediff_lora: str | None, name: str = "the checkpoint"
               ) -> OneStepGenerator:
    if not cfg:
        raise ConfigError(f"{name} does not record its generator config (written by an older ctsr?)")
    return generator_from_config(cfg, pretrained, osediff_lora, f"{name}: ctsr_generator_config")


def load_model(path: str | Path, pretrained: str | None = None, osediff_lora: str | None = None,
               control_steps: int | None = None) -> ControllableSR:
    """Any trained CTSR file → a :class:`ControllableSR` in eval mode (on the CPU). Not a file: a run folder (its
    newest readable checkpoint by recorded step), a CTSR folder or a Hub id ``owner/name[@revision]``
    (:func:`load_pretrained`, which comes back here with the downloaded file). Every loader goes
    through this function: tensors only, metadata and finiteness checked. ``control_steps`` overrides the stored K.
    ``mini``: the mini-world model shipped in the package."""
    path = resolve_model_spec(path).expanduser()
    if path.is_dir():
        from ctsr.runs import model_source

        path = Path(model_source(path)[0])  # a run folder: its newest readable checkpoint by recorded step
    if not path.is_file():
        if path.is_dir() or parse_hub_id(str(path)):  # a CTSR folder, on disk or the Hub's
            return load_pretrained(path if path.is_dir() else str(path), pretrained=pretrained,
                                   osediff_lora=osediff_lora, control_steps=control_steps)
        if path.exists():
            raise ConfigError(f"model file '{shown(path)}' is not a regular file (a .ckpt from `ctsr fit`, a "
                              f".safetensors from `ctsr export`, a CTSR folder or a Hub id owner/name)")
        raise MissingWeightsError(f"model file '{shown(path)}' not found (a .ckpt from `ctsr fit`, a .safetensors "
                                  f"from `ctsr export`, a CTSR folder or a Hub id owner/name)")
    if path.suffix == ".safetensors":
        try:
            return ControllableSR.load(path, pretrained, osediff_lora, control_steps=control_steps)
        except CTSRError:
            raise
        except (TypeError, KeyError, ValueError) as err:  # metadata that parses but does not fit this ctsr
            raise ConfigError(f"'{path}': its metadata does not describe a model this ctsr can build "
                              f"({describe(err)})") from None
    ckpt = load_checkpoint(path, "model file")
    model = model_from_checkpoint(ckpt, pretrained, osediff_lora, str(path))
    if control_steps is not None and getattr(model, "supports_control", True):
        model.control_steps = control_steps
    return model


def model_from_checkpoint(ckpt: dict, pretrained: str | None = None, osediff_lora: str | None = None,
                          name: str = "the checkpoint") -> ControllableSR:
    """A loaded Lightning checkpoint dict (stage 1 or stage 2) → :class:`ControllableSR` in eval mode. Its stored
    configs are checked (keys, types, LoRA ranks against the tensors) before anything is built."""
    state = ckpt.get("state_dict", {})
    if not isinstance(state, dict):
        raise ConfigError(f"{name} holds no state_dict (not a Lightning checkpoint of ctsr)")
    require_finite(state, name)
    stage1 = ckpt.get("ctsr_stage1_lora")
    if "ctsr_stage1_lora" in ckpt and not isinstance(stage1, dict):
        raise ConfigError(f"{name}: ctsr_stage1_lora must be a mapping of tensors, got {type(stage1).__name__}")
    if isinstance(stage1, dict):
        require_float_weights(stage1, name, "stage-1 weights")
    cfg = ckpt.get("ctsr_generator_config", {})
    if cfg:
        check_generator_config(cfg, f"{name}: ctsr_generator_config")
        own = stage1 if isinstance(stage1, dict) else {k[len("generator."):]: v for k, v in state.items()
                                                        if k.startswith("generator.")}
        check_lora_ranks(cfg, own, None, None, name)  # before any layer is built
    if isinstance(stage1, dict):  # stage 2
        control = ckpt.get("ctsr_control", {})
        check_control_config(control, f"{name}: ctsr_control", rank=False)
        weights = {k[len("model.generator.unet."):]: v for k, v in state.items()
                   if k.startswith("model.generator.unet.")}
        require_float_weights(weights, name, "stage-2 weights")
        rank = next((v.shape[0] for k, v in weights.items() if "lora_A" in k), 4)
        generator = _generator(cfg, pretrained, osediff_lora, name)
        model = ControllableSR.from_stage1(generator, stage1, control_rank=rank,
                                           rule=ControlRule.from_stored(control))
        load_into(generator.unet, weights, name)
        model.source = checkpoint_source(ckpt, 2)
        return model.eval()
    stage1 = {k[len("generator."):]: v for k, v in state.items() if k.startswith("generator.")}
    if not stage1:
        raise ConfigError(f"{name} holds neither a stage-1 nor a stage-2 CTSR model")
    require_float_weights(stage1, name, "stage-1 weights")
    model = Stage1Only.from_stage1(_generator(cfg, pretrained, osediff_lora, name), stage1)
    model.source = checkpoint_source(ckpt, 1)
    return model.eval()


def checkpoint_source(ckpt: dict, stage: int) -> dict | None:
    """What a model built from a checkpoint records of where it comes from (``source``, kept by ``ctsr export``):
    the run's id and folder (``ctsr_run``), the stage and the step; None for checkpoints without a run id."""
    run = ckpt.get("ctsr_run")
    if not isinstance(run, dict) or not isinstance(run.get("id"), str):
        return None
    step = ckpt.get("global_step")
    return {"run": run["id"], "path": str(run.get("path", "")), "stage": stage,
            "step": step if isinstance(step, int) else None}


def load_pretrained(repo_or_path: str | Path, revision: str | None = None, **load_kwargs):
    """A CTSR model from the Hub (``owner/name``, ``owner/name@revision``) or a local folder (or model file) →
    :class:`~ctsr.models.control.ControllableSR` in eval mode on the CPU. ``load_kwargs``: ``pretrained``,
    ``osediff_lora``, ``control_steps`` of :meth:`ControllableSR.load`."""
    # every file through load_model: tensors only, metadata and finiteness checked (docs/reliability.md)
    path = Path(repo_or_path).expanduser()
    if path.is_file():
        if revision is not None:
            raise ConfigError(f"revision: '{revision}' given for the local file '{path}' (revisions are for hub ids)")
        return load_model(path, **load_kwargs)
    return load_model(weights_file(resolve_folder(repo_or_path, revision)), **load_kwargs)
