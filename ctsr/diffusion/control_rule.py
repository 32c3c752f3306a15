"""The control rule of stage 2 (DESIGN §6), in one dataclass: the control path, the objective that trains the student
along it, and the timesteps where the student is queried. ``ControllabilityDistillation`` builds one from its
options, :func:`ctsr.losses.stage2.stage2_terms` trains by it, ``ControllableSR`` evaluates by it and the toy lab
(``ctsr.toy``) runs it; it is validated here and nowhere else, and stored as :meth:`ControlRule.to_dict` in
checkpoints (``ctsr_control``) and exported files (metadata ``control``).

    endpoint, fidelity path   trained ‖ε_S(z0, τ_c) − (z_f − z0)‖²        evaluated z(t) = z0 + t·ε_S(z0, τ_c)
    endpoint, curved path     trained ‖t·ε_S(z0, τ(t)) − P(t)‖²          evaluated z(t) = z0 + t·ε_S(z0, τ(t))
    eq8                       trained ‖P(t) − P(t') + Δ·ε_S(z_t, τ(t))‖²   evaluated with K Euler steps
                              z_{k+1} = z_k + (t/K)·ε_S(z_k, τ(t_k)), t_k = k·t/K (``tau_rule = "euler"``)

τ(t) = t·tau_max.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Literal

from ctsr.diffusion.schedule import GENERATOR_TIMESTEP
from ctsr.errors import ConfigError, check

ControlPath = Literal["fidelity", "noise", "denoise"]
Objective = Literal["endpoint", "eq8"]
TauRule = Literal["euler", "next"]
CONTROL_PATHS: tuple[str, ...] = ControlPath.__args__
OBJECTIVES: tuple[str, ...] = Objective.__args__
TAU_RULES: tuple[str, ...] = TauRule.__args__


@dataclass(frozen=True, kw_only=True)
class ControlRule:
    """How t ∈ [0, 1] moves the latent, in training and at inference (module docstring). Immutable: change one
    option with ``dataclasses.replace(rule, tau_c=…)``, which validates again."""

    tau_max: float = float(GENERATOR_TIMESTEP)
    """τ(t) = t·tau_max, in (0, 999] (curved paths and eq8)."""
    control_steps: int = 1
    """K of eq8's Euler integration at inference (ignored by ``endpoint``)."""
    objective: Objective = "endpoint"
    """``endpoint`` (trained where evaluated; one velocity for every t on the fidelity path) or ``eq8`` (the
    paper's loss, for reproduction)."""
    path: ControlPath = "fidelity"
    """``fidelity`` (straight to the fidelity teacher's latent), ``noise`` (eq. 5–6) or ``denoise``."""
    tau_c: float = 0.0
    """The endpoint objective's fixed timestep on the fidelity path, in [0, 999]."""
    tau_rule: TauRule = "euler"
    """eq8's timestep index at inference: ``euler`` τ(t_k) (consistent with eq. 8) or ``next`` τ(t_{k+1}) (files
    written before the objective was recorded)."""

    def __post_init__(self) -> None:
        check(self.path in CONTROL_PATHS, "path", f"must be fidelity, noise or denoise, got {self.path!r}")
        check(self.objective in OBJECTIVES, "objective", f"must be endpoint or eq8, got {self.objective!r}")
        check(self.tau_rule in TAU_RULES, "tau_rule", f"must be euler or next, got {self.tau_rule!r}")
        check(0 < self.tau_max <= GENERATOR_TIMESTEP, "tau_max", f"must lie in (0, 999], got {self.tau_max}")
        check(0 <= self.tau_c <= GENERATOR_TIMESTEP, "tau_c", f"must lie in [0, 999], got {self.tau_c}")
        check(self.control_steps >= 1 and int(self.control_steps) == self.control_steps, "control_steps",
              f"must be a whole number ≥ 1, got {self.control_steps}")
        for name, kind in (("tau_max", float), ("tau_c", float), ("control_steps", int)):
            object.__setattr__(self, name, kind(getattr(self, name)))

    @classmethod
    def checked(cls, prefix: str = "", **options) -> ControlRule:
        """``ControlRule(**options)`` whose errors name the flag as the caller spells it (``prefix="model."``: the
        LightningModule's YAML keys, ``model.tau_max: must lie in …``)."""
        try:
            return cls(**options)
        except ConfigError as err:
            raise ConfigError(f"{prefix}{err}") from None

    @classmethod
    def from_stored(cls, stored: dict, control_steps: int | None = None) -> ControlRule:
        """The rule a checkpoint's ``ctsr_control`` or an exported file's ``control`` metadata records (other keys,
        such as the LoRA ``rank``, are ignored); ``control_steps`` overrides the stored K. Written before the
        objective was recorded: eq8 with the τ(t_{k+1}) index rule it was evaluated with then, so old files
        reproduce their outputs."""
        names = {f.name for f in fields(cls)}
        options = {k: v for k, v in stored.items() if k in names}
        if "objective" not in stored:
            options.update(objective="eq8", tau_rule="next")
        if control_steps:
            options["control_steps"] = control_steps
        return cls(**options)

    def to_dict(self) -> dict:
        """What :meth:`from_stored` reads back."""
        return asdict(self)

    def replace(self, **changes) -> ControlRule:
        """A copy with ``changes``, validated."""
        return replace(self, **changes)

    @property
    def constant_velocity(self) -> bool:
        """True when z(t) = z0 + t·v with one v for every t: endpoint on the fidelity path, or eq8 with one Euler
        step (ε_S at τ(0) whatever t)."""
        if self.objective == "endpoint":
            return self.path == "fidelity"
        return self.control_steps == 1 and self.tau_rule == "euler"

    @property
    def velocity_tau(self) -> float:
        """The timestep of that one velocity: τ_c (endpoint), τ(0) = 0 (eq8 with K = 1)."""
        return self.tau_c if self.objective == "endpoint" else 0.0
