"""What both LightningModules share: LoRA-only checkpoints, a per-rank noise generator, the optimiser's checks —
and what every ``ctsr fit`` run gets from the CLI: :class:`RunGuard` (non-finite guard, SIGINT/SIGTERM, the final
step saved, the random state that makes a resume exact) and :class:`AtomicCheckpointIO` (no partial checkpoint)."""
from __future__ import annotations

import math
import os
import random
import re
import signal
import sys
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_warn

from ctsr.checkpoints import atomic_save, first_non_finite, load_checkpoint
from ctsr.errors import ConfigError, Interrupted, NonFiniteError, check, check_finite

LAST = "last.ckpt"


class LoRACheckpointMixin:
    """Checkpoints hold the trainable (LoRA) weights only — megabytes, not gigabytes — plus what Lightning needs
    to resume (optimiser, loops, callbacks). Loading checks that every trainable weight is present."""

    strict_loading = False  # the frozen base weights come from the config, not from the checkpoint

    def _trainable_keys(self) -> set[str]:
        return {n for n, p in self.named_parameters() if p.requires_grad}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        keep = self._trainable_keys()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}
        if hasattr(self, "generator") and hasattr(self.generator, "config"):
            checkpoint["ctsr_generator_config"] = dict(self.generator.config)
        if getattr(self, "_noise_generator", None) is not None:
            checkpoint["ctsr_noise_generator"] = self._noise_generator.get_state()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        missing = sorted(self._trainable_keys() - set(checkpoint.get("state_dict", {})))
        if missing:
            raise ConfigError(
                f"ckpt_path: the checkpoint lacks {len(missing)} trainable weights of this model, e.g. '{missing[0]}'"
                f" (was it written with another lora_rank or model config?)"
            )
        found = first_non_finite(checkpoint.get("state_dict", {}))
        if found is not None:
            raise NonFiniteError(f"ckpt_path: the checkpoint's weights hold non-finite values ({found[1]} NaN/inf "
                                 f"in '{found[0]}'); resume from an earlier checkpoint")
        self._resume_noise_state = checkpoint.get("ctsr_noise_generator")

    def noise_generator(self, device: torch.device, seed: int) -> torch.Generator:
        """The generator of τ and noise draws: one stream per rank (ranks must not share noise)."""
        gen = getattr(self, "_noise_generator", None)
        if gen is None or gen.device != device:
            rank = self.trainer.global_rank if self._trainer is not None else 0
            gen = torch.Generator(device=device).manual_seed(seed + 7919 * rank)
            state = getattr(self, "_resume_noise_state", None)
            if state is not None:
                gen.set_state(state)
                self._resume_noise_state = None
            self._noise_generator = gen
        return gen


def check_optimizer(lr: float, betas, weight_decay: float, prefix: str = "model") -> None:
    """AdamW's settings, refused with the key named (finite, lr > 0, betas in [0, 1), weight_decay ≥ 0)."""
    check_finite(lr, f"{prefix}.lr")
    check(lr > 0, f"{prefix}.lr", f"must be > 0, got {lr}")
    betas = tuple(betas)
    check(len(betas) == 2, f"{prefix}.betas", f"two values [beta1, beta2], got {list(betas)}")
    check_finite(betas, f"{prefix}.betas")
    check(all(0 <= b < 1 for b in betas), f"{prefix}.betas", f"each must lie in [0, 1), got {list(betas)}")
    check_finite(weight_decay, f"{prefix}.weight_decay")
    check(weight_decay >= 0, f"{prefix}.weight_decay", f"must be ≥ 0, got {weight_decay}")


def adamw(params, lr: float, betas: tuple[float, float], weight_decay: float) -> torch.optim.Optimizer:
    check_optimizer(lr, betas, weight_decay)
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ConfigError("the model has no trainable parameters (check lora_rank)")
    return torch.optim.AdamW(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay)


# -- checkpoint files ------------------------------------------------------------------------------------------------
class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written through a temporary file in their own folder (fsync, rename: never a partial file, even
    with ``TMPDIR`` on another file system) and read with ``weights_only=True`` whatever the caller asks.

    The CLI also tells it the run (:meth:`set_run`): every checkpoint then records the run's id and folder
    (``ctsr_run``), and a resumed checkpoint's ModelCheckpoint state is moved onto the folders the callbacks write
    to now (:func:`move_checkpoint_state`) — a run folder that was renamed, moved or forked keeps ``last.ckpt`` as
    its newest step (Lightning drops that state when its ``dirpath`` changed, and then writes ``last-v1.ckpt``
    beside the old ``last.ckpt``)."""

    def __init__(self) -> None:
        super().__init__()
        self.run: dict | None = None
        self._targets: Callable[[], Mapping[str, tuple[str, str | None]]] | None = None
        self._fresh = False

    def set_run(self, run: dict | None, targets: Callable[[], Mapping[str, tuple[str, str | None]]] | None = None,
                fresh: bool = False) -> None:
        """``run``: recorded in every checkpoint written. ``targets``: called when a checkpoint is loaded (the
        callbacks are set up by then), :func:`checkpoint_targets` of the trainer. ``fresh`` (a fork): the callbacks
        start their own record of files instead of continuing the source run's."""
        self.run, self._targets, self._fresh = run, targets, fresh

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if self.run is not None:
            checkpoint = {**checkpoint, "ctsr_run": dict(self.run)}
        atomic_save(checkpoint, path)

    def load_checkpoint(self, path, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        checkpoint = load_checkpoint(path, "ckpt_path")
        if self._targets is not None:
            move_checkpoint_state(checkpoint, self._targets(), self._fresh)
        return checkpoint


def checkpoint_targets(trainer: L.Trainer) -> dict[str, tuple[str, str | None]]:
    """Each ModelCheckpoint of ``trainer`` by its ``state_key``: (its ``dirpath``, the name of its last checkpoint —
    ``last.ckpt`` — or None when it writes none or the name is a template)."""
    out = {}
    for cb in trainer.checkpoint_callbacks:
        if isinstance(cb, ModelCheckpoint) and cb.dirpath:
            last = None
            if cb.save_last and "{" not in cb.CHECKPOINT_NAME_LAST:
                last = cb.CHECKPOINT_NAME_LAST + cb.FILE_EXTENSION
            out[cb.state_key] = (str(cb.dirpath), last)
    return out


_CHECKPOINT_PATHS = ("last_model_path", "best_model_path", "kth_best_model_path")


def move_checkpoint_state(checkpoint: dict, targets: Mapping[str, tuple[str, str | None]], fresh: bool = False) -> None:
    """Move the saved state of each ModelCheckpoint (by its ``state_key``) onto ``targets``' folder it writes to
    now: its ``dirpath`` and the files it recorded there (``last_model_path``, ``best_model_path``,
    ``kth_best_model_path``, ``best_k_models``; the same file names). Its last checkpoint is ``last.ckpt`` again
    where the state names none or a versioned ``last-vN.ckpt`` (a folder resumed before this, or a checkpoint
    written before the first ``last.ckpt``) and no other callback writes ``last.ckpt`` into that folder.
    ``fresh``: an empty record in that folder instead (a fork's)."""
    callbacks = checkpoint.get("callbacks")
    if not isinstance(callbacks, dict):
        return
    lasts = [os.path.join(d, last) for d, last in targets.values() if last]
    for key, state in list(callbacks.items()):
        if key not in targets or not isinstance(state, dict) or "dirpath" not in state:
            continue
        new, last = targets[key]
        if fresh:
            callbacks[key] = {"dirpath": new, "best_model_score": None, "best_model_path": ""}
            continue
        old = Path(str(state.get("dirpath")))

        def moved(file, old=old, new=new):
            return os.path.join(new, Path(file).name) if file and Path(str(file)).parent == old else file

        state = dict(state, dirpath=new)
        for field in _CHECKPOINT_PATHS:
            if field in state:
                state[field] = moved(state[field])
        if isinstance(state.get("best_k_models"), dict):
            state["best_k_models"] = {moved(k): v for k, v in state["best_k_models"].items()}
        if last and lasts.count(os.path.join(new, last)) == 1:
            stem, ext = os.path.splitext(last)
            current = str(state.get("last_model_path") or "")
            if not current or (Path(current).parent == Path(new)
                               and re.fullmatch(re.escape(stem) + r"-v\d+" + re.escape(ext), Path(current).name)):
                state["last_model_path"] = os.path.join(new, last)
        callbacks[key] = state


# -- the run guard ---------------------------------------------------------------------------------------------------
def _rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [np_state[0], [int(x) for x in np_state[1]], int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _total_norm(tensors: list[torch.Tensor]) -> float:
    if not tensors:
        return 0.0
    return float(torch.nn.utils.get_total_norm(tensors, 2.0, error_if_nonfinite=False))


class RunGuard(Callback):
    """Added to every ``ctsr`` run by the CLI.

    - A non-finite loss or gradient skips that optimiser step (the gradients are dropped, AdamW leaves the weights
      and its state as they were), counted in ``train/skipped_nonfinite``; ``nonfinite_patience`` skips in a row
      stop the run (:class:`NonFiniteError`, exit status 2), the checkpoints written so far kept. Weights that become
      non-finite stop the run at once, and no checkpoint is ever written with non-finite trainable weights.
    - SIGINT / SIGTERM: the current step ends, ``last.ckpt`` is written at it, the run exits with 128 + the signal
      number (130 / 143); a second signal stops at once. The final step is always saved as ``last.ckpt``.
    - The global random state (torch, Python, NumPy) is saved in every checkpoint and restored on resume;
      validation runs on a copy of it. With the data module's (seed, epoch, index) randomness and its saved
      degradation generator and pool, a resumed run repeats the uninterrupted one bit for bit on the CPU.
    """

    def __init__(self, nonfinite_patience: int = 3) -> None:
        super().__init__()
        check(nonfinite_patience >= 1, "nonfinite_patience", f"must be ≥ 1, got {nonfinite_patience}")
        self.nonfinite_patience = nonfinite_patience
        self.skipped_total = 0
        self.consecutive = 0
        self.first_skipped_step: int | None = None
        self.signal: int | None = None
        self._loss_finite = True
        self._params: list[torch.Tensor] = []
        self._previous_handlers: dict[int, Any] = {}
        self._pending_rng: dict | None = None
        self._val_rng: dict | None = None
        self._saved_steps: set[int] = set()

    # -- state --------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"skipped_total": self.skipped_total, "consecutive": self.consecutive, "rng": _rng_state()}

    def load_state_dict(self, state: dict) -> None:
        self._resumed = True
        self.skipped_total = int(state.get("skipped_total", 0))
        self.consecutive = int(state.get("consecutive", 0))
        self._pending_rng = state.get("rng")

    # -- signals -------------------------------------------------------------------------------------------------
    def _on_signal(self, signum, frame) -> None:
        if self.signal is not None:  # asked twice: stop now (nothing more is saved)
            raise KeyboardInterrupt
        self.signal = signum
        print(f"\nctsr: {signal.Signals(signum).name} received: saving {LAST} when this step ends "
              f"(send it again to stop at once)", file=sys.stderr, flush=True)

    def _install_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous_handlers[sig] = signal.getsignal(sig)
            signal.signal(sig, self._on_signal)

    def _restore_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig, handler in self._previous_handlers.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self._previous_handlers = {}

    # -- saving --------------------------------------------------------------------------------------------------
    @staticmethod
    def _checkpoint_callback(trainer: L.Trainer) -> ModelCheckpoint | None:
        return trainer.checkpoint_callback if isinstance(trainer.checkpoint_callback, ModelCheckpoint) else None

    def _saved_at_current_step(self, trainer: L.Trainer) -> bool:
        mc = self._checkpoint_callback(trainer)
        last = Path(mc.dirpath) / LAST if mc is not None and mc.dirpath else None
        if trainer.global_step in self._saved_steps:
            return True
        return mc is not None and mc._last_global_step_saved == trainer.global_step and bool(mc.save_last) and \
            last is not None and last.is_file()

    def save_last(self, trainer: L.Trainer) -> Path | None:
        """Write ``last.ckpt`` at the current step (through the ModelCheckpoint, so its own record stays right)."""
        mc = self._checkpoint_callback(trainer)
        if mc is None or not mc.dirpath or trainer.global_step == 0:
            return None
        path = Path(mc.dirpath) / LAST
        if not self._saved_at_current_step(trainer):
            if mc.save_last:
                mc._save_last_checkpoint(trainer, mc._monitor_candidates(trainer))
                path = Path(mc.last_model_path)
            else:
                mc._save_checkpoint(trainer, str(path))
            self._saved_steps.add(trainer.global_step)
        return path

    def _interrupt(self, trainer: L.Trainer) -> None:
        path = self.save_last(trainer)
        name = signal.Signals(self.signal).name
        where = f"saved '{path}'" if path is not None else "nothing to save yet"
        raise Interrupted(f"{name} at step {trainer.global_step}: {where}; resume with `--ckpt_path last`",
                          self.signal)

    # -- hooks ---------------------------------------------------------------------------------------------------
    def on_train_start(self, trainer, pl_module) -> None:
        self._params = [p for p in pl_module.parameters() if p.requires_grad]
        self._start_step = trainer.global_step
        self.signal = None
        self._install_signals()
        if getattr(self, "_resumed", False):
            self._apply_resumed_settings(trainer, pl_module)

    @staticmethod
    def _apply_resumed_settings(trainer, pl_module) -> None:
        """A resume with --resume_with_changes: the optimiser state comes from the checkpoint, its settings (lr,
        betas, weight_decay) from the config now given — else a changed lr would be silently ignored."""
        hparams = getattr(pl_module, "hparams", {})
        wanted = {k: (tuple(hparams[k]) if k == "betas" else hparams[k])
                  for k in ("lr", "betas", "weight_decay") if k in hparams}
        for opt in trainer.optimizers:
            for group in opt.param_groups:
                for key, value in wanted.items():
                    if key in group and group[key] != value:
                        rank_zero_warn(f"resumed with {key} = {value} (the checkpoint's optimiser had {group[key]})")
                        group[key] = value

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._pending_rng is not None:  # resumed: continue the random stream where the checkpoint left it
            _set_rng_state(self._pending_rng)
            self._pending_rng = None

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        self._loss_finite = bool(torch.isfinite(loss.detach()).all())

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        finite = self._loss_finite and math.isfinite(_total_norm(grads))
        self._loss_finite = True
        if finite:
            self.consecutive = 0
        else:
            for group in optimizer.param_groups:  # no gradient: AdamW skips every parameter, its state unchanged
                for p in group["params"]:
                    p.grad = None
            self.skipped_total += 1
            self.consecutive += 1
            step = trainer.global_step + 1
            if self.consecutive == 1:
                self.first_skipped_step = step
            rank_zero_warn(f"step {step}: non-finite loss or gradient, optimiser step skipped "
                           f"({self.consecutive} in a row, {self.skipped_total} in all)")
        pl_module.log("train/skipped_nonfinite", float(self.skipped_total), on_step=True, on_epoch=False,
                      batch_size=1)
        if self.consecutive >= self.nonfinite_patience:
            mc = self._checkpoint_callback(trainer)
            kept = mc.last_model_path or mc._last_checkpoint_saved if mc is not None else ""
            lr = getattr(pl_module, "hparams", {}).get("lr")
            raise NonFiniteError(
                f"{self.consecutive} optimiser steps in a row had a non-finite loss or gradient (steps "
                f"{self.first_skipped_step}–{trainer.global_step + 1}); training stopped, "
                + (f"the last checkpoint '{kept}' holds finite weights" if kept else "no checkpoint was written")
                + (f". Lower model.lr (now {lr:g})" if isinstance(lr, float) else "")
                + " or check the data; nonfinite_patience sets how many skips are tolerated")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._params and not math.isfinite(_total_norm([p.detach() for p in self._params])):
            found = first_non_finite(dict(pl_module.named_parameters()))
            raise NonFiniteError(f"step {trainer.global_step}: the trainable weights became non-finite "
                                 f"(e.g. '{found[0] if found else '?'}'); training stopped, the checkpoints written "
                                 f"so far are kept. Lower model.lr")
        if self.signal is not None:
            self._interrupt(trainer)

    def on_validation_start(self, trainer, pl_module) -> None:
        if trainer.state.fn == TrainerFn.FITTING:  # validation inside fit draws from a copy of the random state
            self._val_rng = _rng_state()

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if self.signal is not None and trainer.state.fn == TrainerFn.FITTING and self._saved_at_current_step(trainer):
            self._end_validation_fork()
            self._interrupt(trainer)

    def _end_validation_fork(self) -> None:
        if self._val_rng is not None:
            _set_rng_state(self._val_rng)
            self._val_rng = None

    def on_validation_end(self, trainer, pl_module) -> None:
        self._end_validation_fork()
        if self.signal is not None and trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking:
            self._interrupt(trainer)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        found = first_non_finite(checkpoint.get("state_dict", {}))
        if found is not None:
            raise NonFiniteError(f"step {trainer.global_step}: refusing to write a checkpoint with non-finite weights "
                                 f"({found[1]} NaN/inf in '{found[0]}'); the earlier checkpoints are kept")

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.global_step != getattr(self, "_start_step", None):
            self.save_last(trainer)  # the final step, whatever the checkpoint interval
        self._restore_signals()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._restore_signals()

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self._restore_signals()
