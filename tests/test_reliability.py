"""Fault tolerance (issue 16, docs/reliability.md): no code from a file, no NaN called success, exact resume,
nothing lost on SIGINT/SIGTERM, atomic checkpoints, lock files, the ablation runner after any kill, one-line errors.

The fast tests run in `make test`; the kill loops (real `ctsr fit` processes killed by signals) are marked slow."""
from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from poisoned import crafted_pickle

from ctsr.checkpoints import atomic_save, load_checkpoint
from ctsr.cli import main
from ctsr.errors import ConfigError, NonFiniteError

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "tests" / "scripts"
pytestmark = pytest.mark.usefixtures("one_thread", "lightning_logs_to_stderr")


# -- helpers ---------------------------------------------------------------------------------------------------------
def _one_line_error(capsys, text: str | None = None) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line.startswith("ctsr")]
    assert "Traceback" not in err, err[-3000:]
    assert lines and lines[-1].startswith(("ctsr: error:", "ctsr upscale: error:")), err[-2000:]
    if text is not None:
        assert text in lines[-1], lines[-1]
    return lines[-1]


TINY_EVAL = """
trainer:
  accelerator: cpu
  precision: 32-true
  enable_progress_bar: false
  callbacks:
    - class_path: ctsr.callbacks.t_sweep.TSweepEvaluation
      init_args: {metrics: [psnr], metric_weights: random, num_images: 1}
data:
  init_args: {test_pairs: null, test_dirs: [data/samples/val], val_crop_size: 64, val_batch_size: 2, num_workers: 0}
"""


# -- 1. no pickle code from any file ---------------------------------------------------------------------------------
def test_crafted_pickle_runs_nowhere(workdir, capsys):
    marker = workdir / "MARKER"
    evil = crafted_pickle(workdir / "evil.ckpt", marker, state_dict={}, global_step=1)
    with pytest.raises(pickle.UnpicklingError):  # the file is a real exploit: torch.load would run it
        torch.load(evil, weights_only=True)
    from PIL import Image

    Image.new("RGB", (16, 16), (120, 30, 200)).save(workdir / "in.png")
    (workdir / "eval.yaml").write_text(TINY_EVAL)
    stage1 = ["fit", "--config", "experiments/tiny_stage1.yaml", "--trainer.logger.init_args.save_dir", "runs"]
    entries = {
        "upscale --ckpt": ["upscale", "in.png", "out.png", "--ckpt", str(evil)],
        "export": ["export", str(evil), "out.safetensors"],
        "fit --ckpt_path": stage1 + ["--trainer.logger.init_args.name", "a", "--ckpt_path", str(evil)],
        "stage1_ckpt": ["fit", "--config", "experiments/tiny_stage2.yaml", "--trainer.logger.init_args.save_dir",
                        "runs", "--model.init_args.stage1_ckpt", str(evil)],
        "osediff_lora": stage1 + ["--trainer.logger.init_args.name", "b",
                                  "--model.init_args.generator.init_args.osediff_lora", str(evil)],
        "test model_path": ["test", "--config", "experiments/eval.yaml", "--config", "eval.yaml",
                            "--model.init_args.model_path", str(evil)],
        "test --ckpt_path": ["test", "--config", "experiments/eval.yaml", "--config", "eval.yaml",
                             "--ckpt_path", str(evil)],
        "sr_model (spandrel)": stage1 + ["--trainer.logger.init_args.name", "c",
                                         "--model.init_args.fidelity_teacher.init_args.sr_model", str(evil)],
        "sr_model (resshift)": stage1 + ["--trainer.logger.init_args.name", "d",
                                         "--model.init_args.fidelity_teacher.init_args.sr_model",
                                         f"resshift:{evil},{evil}"],
        "demo --ckpt": ["demo", "--ckpt", str(evil), "--device", "cpu"],
        "push": ["push", str(evil), "owner/name", "--out", "pushed"],
    }
    for name, argv in entries.items():
        assert main(argv) == 2, name
        line = _one_line_error(capsys)
        assert str(evil) in line or "evil.ckpt" in line, (name, line)
        assert not marker.exists(), f"{name} ran the payload"
    assert not (workdir / "out.png").exists() and not (workdir / "out.safetensors").exists()
    from ctsr.models.hub import (
        load_pretrained,  # the hub loader (ControllableSR.from_pretrained) on a local file
    )

    with pytest.raises(ConfigError, match="evil.ckpt"):
        load_pretrained(evil)
    assert not marker.exists()


def test_broken_weight_files_are_one_line(tmp_path):
    from ctsr.models.control import read_stage1_lora
    from ctsr.models.export import load_model

    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    truncated = tmp_path / "truncated.ckpt"
    torch.save({"state_dict": {"w": torch.ones(1000)}}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:300])
    noise = tmp_path / "noise.safetensors"
    noise.write_bytes(os.urandom(4096))
    for path, text in ((empty, "empty"), (truncated, "not a readable checkpoint"),
                       (noise, "not a readable safetensors file")):
        with pytest.raises(ConfigError, match=text):
            load_model(path)
        with pytest.raises(ConfigError):
            read_stage1_lora(path)
    with pytest.raises(ConfigError, match="holds a list"):
        torch.save([1, 2], tmp_path / "list.ckpt")
        load_checkpoint(tmp_path / "list.ckpt")


def _tiny_export(path: Path, poison: bool = False, meta: dict | None = None) -> Path:
    from safetensors.torch import save_file

    from ctsr.models.control import ControllableSR
    from ctsr.models.generator import OneStepGenerator

    torch.manual_seed(0)
    gen = OneStepGenerator("tiny")
    model = ControllableSR.from_stage1(gen, {n: p.detach().clone() for n, p in gen.named_parameters()
                                              if p.requires_grad})
    model.export(path)
    if poison or meta is not None:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            tensors, metadata = {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata())  # noqa: SIM118
        if poison:
            key = next(k for k in tensors if k.startswith("stage2."))
            tensors[key] = tensors[key].clone()
            tensors[key].view(-1)[0] = float("nan")
        metadata.update(meta or {})
        save_file(tensors, str(path), metadata=metadata)
    return path


def test_non_finite_and_bad_metadata_model_files_are_refused(tmp_path, capsys):
    from ctsr.models.export import load_model

    nan = _tiny_export(tmp_path / "nan.safetensors", poison=True)
    with pytest.raises(NonFiniteError, match="nan.safetensors.*non-finite"):
        load_model(nan)
    bad = _tiny_export(tmp_path / "meta.safetensors", meta={"generator": "{not json"})
    with pytest.raises(ConfigError, match="metadata 'generator' is not valid JSON"):
        load_model(bad)
    foreign = _tiny_export(tmp_path / "foreign.safetensors", meta={"format": "something-else"})
    with pytest.raises(ConfigError, match="not a CTSR model file"):
        load_model(foreign)
    # as the user sees it: upscale refuses the NaN model in one line, writes nothing
    from PIL import Image

    Image.new("RGB", (16, 16)).save(tmp_path / "in.png")
    assert main(["upscale", str(tmp_path / "in.png"), str(tmp_path / "out.png"), "--ckpt", str(nan)]) == 2
    _one_line_error(capsys, "non-finite")
    assert not (tmp_path / "out.png").exists()


def test_non_finite_checkpoint_is_refused_by_loaders(tmp_path):
    from ctsr.models.control import read_stage1_lora
    from ctsr.models.export import model_from_checkpoint

    ckpt = {"state_dict": {"generator.unet.x.lora_A.default.weight": torch.tensor([1.0, float("inf")])},
            "global_step": 3}
    torch.save(ckpt, tmp_path / "s1.ckpt")
    with pytest.raises(NonFiniteError, match="s1.ckpt.*non-finite"):
        read_stage1_lora(tmp_path / "s1.ckpt")
    with pytest.raises(NonFiniteError):
        model_from_checkpoint(ckpt, name=str(tmp_path / "s1.ckpt"))


# -- 2. non-finite never saved, never silent -----------------------------------------------------------------------
@pytest.mark.parametrize("flag,value,key", [
    ("--model.init_args.lr", ".inf", "model.init_args.lr"),
    ("--model.init_args.lambda_fl", ".inf", "model.init_args.lambda_fl"),
    ("--model.init_args.betas", "[1.5, 0.999]", "model.betas"),
    ("--model.init_args.weight_decay", "-1", "model.weight_decay"),
])
def test_bad_float_settings_name_the_key(workdir, capsys, flag, value, key):
    argv = ["fit", "--config", "experiments/tiny_stage1.yaml", "--trainer.logger.init_args.save_dir", "runs",
            flag, value]
    assert main(argv) == 2
    _one_line_error(capsys, key)
    assert not list(workdir.glob("runs/**/*.ckpt"))


def test_float_helpers_name_the_key():
    from ctsr.errors import check_finite_values, non_finite_entries
    from ctsr.lit.common import check_optimizer

    with pytest.raises(ConfigError, match="model.gamma_time: must be a finite number, got nan"):
        check_finite_values("model", {"lambda_rn": 1.0, "gamma_time": float("nan")})
    with pytest.raises(ConfigError, match="model.betas"):
        check_optimizer(1e-3, (0.9, float("inf")), 0.0)
    tree = {"data": {"init_args": {"degradation": {"init_args": {"sigma": [0.2, float("-inf")]}}}}}
    assert list(non_finite_entries(tree)) == [("data.init_args.degradation.init_args.sigma.1", float("-inf"))]


def _toy_module(nan_steps: set[int], sgd_lr: float | None = None, lr: float = 0.1):
    import lightning as L

    class Toy(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(3))
            self.calls = 0
            self.save_hyperparameters({"lr": lr})

        def training_step(self, batch, batch_idx):
            self.calls += 1
            loss = (self.w * batch[0]).pow(2).sum()
            return loss * float("nan") if self.calls in nan_steps else loss

        def configure_optimizers(self):
            if sgd_lr is not None:
                return torch.optim.SGD(self.parameters(), lr=sgd_lr)
            return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr)

        def train_dataloader(self):
            return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(64, 3)), batch_size=1)

    return Toy()


def _toy_trainer(tmp_path, steps, patience=3, every=1):
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    from ctsr.lit.common import AtomicCheckpointIO, RunGuard

    guard = RunGuard(patience)
    mc = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, every_n_train_steps=every, save_top_k=-1)
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[guard, mc], plugins=[AtomicCheckpointIO()])
    return trainer, guard


def test_non_finite_steps_are_skipped_counted_and_stop_the_run(tmp_path):
    module = _toy_module({3, 4})
    trainer, guard = _toy_trainer(tmp_path, steps=6)
    trainer.fit(module)
    assert guard.skipped_total == 2 and guard.consecutive == 0
    assert trainer.global_step == 6 and torch.isfinite(module.w).all()
    assert float(trainer.callback_metrics["train/skipped_nonfinite"]) == 2.0

    # a run that stays non-finite: stopped after `patience` skips in a row, the earlier checkpoints finite
    module = _toy_module({3, 4, 5, 6, 7})
    trainer, guard = _toy_trainer(tmp_path / "b", steps=10, patience=3)
    with pytest.raises(NonFiniteError, match="3 optimiser steps in a row"):
        trainer.fit(module)
    ckpts = sorted((tmp_path / "b" / "ckpt").glob("*.ckpt"))
    assert ckpts
    for path in ckpts:
        state = load_checkpoint(path)["state_dict"]
        assert all(torch.isfinite(v).all() for v in state.values())
    assert load_checkpoint(tmp_path / "b" / "ckpt" / "last.ckpt")["global_step"] <= 4


def test_skipped_step_leaves_weights_and_optimiser_untouched(tmp_path):
    module = _toy_module({2})
    trainer, _ = _toy_trainer(tmp_path, steps=1)
    trainer.fit(module)
    w1 = module.w.detach().clone()
    step1 = trainer.optimizers[0].state[module.w]["step"].clone()
    trainer2, _ = _toy_trainer(tmp_path / "2", steps=2)
    module.calls = 1
    trainer2.fit(module, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert torch.equal(module.w.detach(), w1)                     # step 2 had a NaN loss: no update
    assert torch.equal(trainer2.optimizers[0].state[module.w]["step"], step1)  # AdamW's step count unchanged


def test_final_step_is_always_saved(tmp_path):
    trainer, _ = _toy_trainer(tmp_path, steps=3, every=2)
    trainer.fit(_toy_module(set()))
    assert load_checkpoint(tmp_path / "ckpt" / "last.ckpt")["global_step"] == 3


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_saves_the_current_step_and_exits_non_zero(tmp_path, sig):
    import lightning as L

    from ctsr.errors import Interrupted

    class SignalAt(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step == 3:
                os.kill(os.getpid(), sig)

    before = signal.getsignal(sig)
    trainer, _ = _toy_trainer(tmp_path, steps=10, every=2)
    trainer.callbacks.insert(0, SignalAt())
    with pytest.raises(Interrupted, match=f"{signal.Signals(sig).name} at step 3") as info:
        trainer.fit(_toy_module(set()))
    assert info.value.exit_code == 128 + sig
    assert load_checkpoint(tmp_path / "ckpt" / "last.ckpt")["global_step"] == 3
    assert signal.getsignal(sig) == before  # the handler is the caller's again


def test_a_resume_with_changes_applies_the_new_lr(tmp_path):
    trainer, _ = _toy_trainer(tmp_path, steps=1)
    trainer.fit(_toy_module(set(), lr=0.1))
    trainer2, _ = _toy_trainer(tmp_path / "2", steps=2)
    module = _toy_module(set(), lr=0.5)
    trainer2.fit(module, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert trainer2.optimizers[0].param_groups[0]["lr"] == 0.5   # not the checkpoint's 0.1
    assert int(trainer2.optimizers[0].state[module.w]["step"]) == 2   # the AdamW state continued


def test_weights_that_become_non_finite_stop_the_run_at_once(tmp_path):
    trainer, _ = _toy_trainer(tmp_path, steps=5, every=1)
    with pytest.raises(NonFiniteError, match="step 1: the trainable weights became non-finite"):
        trainer.fit(_toy_module(set(), sgd_lr=float("inf")))  # finite loss and gradient, infinite update
    assert not list((tmp_path / "ckpt").glob("*.ckpt"))     # nothing written with them


def test_no_checkpoint_with_non_finite_weights(tmp_path):
    from ctsr.lit.common import RunGuard

    guard = RunGuard()
    with pytest.raises(NonFiniteError, match="refusing to write"):
        guard.on_save_checkpoint(type("T", (), {"global_step": 5})(), None,
                                 {"state_dict": {"w": torch.tensor([float("nan")])}})


def test_sigterm_before_training_is_not_success(monkeypatch, capsys):
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    import ctsr.cli.lightning

    def terminated(argv):
        raise SIGTERMException  # Lightning's own SIGTERM path (a SystemExit without code: status 0)

    monkeypatch.setattr(ctsr.cli.lightning, "_lightning_cli", terminated)
    assert main(["fit"]) == 143
    assert "interrupted: SIGTERM" in capsys.readouterr().err


def test_export_never_overwrites_its_input(tmp_path, capsys):
    model = _tiny_export(tmp_path / "m.safetensors")
    before = model.read_bytes()
    assert main(["export", str(model), str(model), "--force"]) == 2
    _one_line_error(capsys, "is the input file")
    assert model.read_bytes() == before


# -- 3./4. checkpoints on disk, resume resolution, locks, settings ------------------------------------------------
def test_atomic_save_never_leaves_a_partial_file(tmp_path, monkeypatch):
    target = tmp_path / "last.ckpt"
    atomic_save({"global_step": 1}, target)

    def dies(obj, f, *a, **k):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dies)
    with pytest.raises(KeyboardInterrupt):
        atomic_save({"global_step": 2}, target)
    monkeypatch.undo()
    assert load_checkpoint(target)["global_step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary file left behind


def test_ckpt_path_last_falls_back_and_never_starts_from_zero(tmp_path, capsys):
    from ctsr.runs import resolve_last

    run = tmp_path / "runs" / "exp"
    ckpts = run / "checkpoints"
    ckpts.mkdir(parents=True)
    atomic_save({"global_step": 4}, ckpts / "epoch=0-step=4.ckpt")
    (ckpts / "last.ckpt").write_bytes(b"")  # a save killed under the old writer
    warnings = []
    path, ckpt = resolve_last(ckpts, run, warnings.append)
    assert path.name == "epoch=0-step=4.ckpt" and ckpt["global_step"] == 4
    assert "last.ckpt" in warnings[0] and "epoch=0-step=4.ckpt" in warnings[0]
    (ckpts / "epoch=0-step=4.ckpt").write_bytes(b"garbage")
    with pytest.raises(ConfigError, match="none of the 2 checkpoints"):
        resolve_last(ckpts, run)
    with pytest.raises(ConfigError, match="no checkpoint in .*exq.*runs with checkpoints in .*: exp.*is the run name right"):
        resolve_last(tmp_path / "runs" / "exq" / "checkpoints", tmp_path / "runs" / "exq")


def test_ckpt_path_last_is_the_highest_recorded_step(tmp_path):
    """By the step inside each file, not by name or time: a stale last.ckpt (a resume before run ids wrote
    last-v1.ckpt beside it) loses to a later step; among equal steps last.ckpt wins."""
    from ctsr.runs import resolve_last

    run = tmp_path / "runs" / "b"
    ckpts = run / "checkpoints"
    atomic_save({"global_step": 6}, ckpts / "epoch=2-step=6.ckpt")
    atomic_save({"global_step": 4}, ckpts / "last.ckpt")
    atomic_save({"global_step": 2}, ckpts / "epoch=0-step=2.ckpt")   # the newest file, the lowest step
    os.utime(ckpts / "epoch=2-step=6.ckpt", (1, 1))
    warnings = []
    path, ckpt = resolve_last(ckpts, run, warnings.append)
    assert path.name == "epoch=2-step=6.ckpt" and ckpt["global_step"] == 6
    assert len(warnings) == 1 and "last.ckpt' holds step 4" in warnings[0] and "step=6.ckpt' step 6" in warnings[0]
    atomic_save({"global_step": 6}, ckpts / "last.ckpt")
    warnings.clear()
    assert resolve_last(ckpts, run, warnings.append)[0].name == "last.ckpt" and not warnings
    (ckpts / "last.ckpt").write_bytes(b"garbage")                   # unreadable: the next step down, said so
    path, _ = resolve_last(ckpts, run, warnings.append)
    assert path.name == "epoch=2-step=6.ckpt" and warnings[0].startswith("--ckpt_path last: '") and \
        "last.ckpt' " in warnings[0] and "resuming from the newest readable" in warnings[0]


def test_a_moved_checkpoint_folder_keeps_last_ckpt_the_newest(tmp_path, recwarn):
    """AtomicCheckpointIO moves the resumed ModelCheckpoint state onto the folder it writes to now: after a move,
    two resumes overwrite last.ckpt (no last-v1.ckpt, no -vN duplicates, no step trained twice) and end on the
    weights of an uninterrupted run; every checkpoint records the run."""
    import shutil

    from ctsr.lit.common import checkpoint_targets

    ref, _ = _toy_trainer(tmp_path / "ref", steps=8)
    reference = _toy_module(set())
    ref.fit(reference)
    trainer, _ = _toy_trainer(tmp_path / "a", steps=4)
    trainer.fit(_toy_module(set()))
    shutil.move(tmp_path / "a", tmp_path / "b")
    last = tmp_path / "b" / "ckpt" / "last.ckpt"
    for steps in (6, 8):
        trainer, _ = _toy_trainer(tmp_path / "b", steps=steps)
        trainer.strategy.checkpoint_io.set_run({"id": "r1", "path": str(tmp_path / "b")},
                                               lambda t=trainer: checkpoint_targets(t))
        module = _toy_module(set())
        trainer.fit(module, ckpt_path=str(last))
        assert load_checkpoint(last)["global_step"] == steps
    assert sorted(p.name for p in last.parent.iterdir()) == [f"epoch=0-step={s}.ckpt" for s in range(1, 9)] + [
        "last.ckpt"]
    assert torch.equal(module.w.detach(), reference.w.detach())
    assert load_checkpoint(last)["ctsr_run"] == {"id": "r1", "path": str(tmp_path / "b")}
    assert not [w for w in recwarn if "dirpath has changed" in str(w.message)]


def test_checkpoint_state_is_moved_onto_the_current_folder():
    from ctsr.lit.common import move_checkpoint_state

    old, new = "runs/a/checkpoints", "/x/runs/b/checkpoints"
    state = {"dirpath": old, "last_model_path": f"{old}/last.ckpt", "best_model_path": f"{old}/epoch=1-step=4.ckpt",
             "kth_best_model_path": "/elsewhere/k.ckpt", "best_model_score": None,
             "best_k_models": {f"{old}/epoch=1-step=4.ckpt": 0.5}}
    ckpt = {"callbacks": {"MC{a}": dict(state), "MC{other}": dict(state), "RunGuard": {"rng": 1}}}
    move_checkpoint_state(ckpt, {"MC{a}": (new, "last.ckpt"), "RunGuard": (new, None)})
    moved = ckpt["callbacks"]["MC{a}"]
    assert moved["dirpath"] == new and moved["last_model_path"] == f"{new}/last.ckpt"
    assert moved["best_model_path"] == f"{new}/epoch=1-step=4.ckpt"
    assert moved["best_k_models"] == {f"{new}/epoch=1-step=4.ckpt": 0.5}
    assert moved["kth_best_model_path"] == "/elsewhere/k.ckpt"          # not in the run's folder: left alone
    assert ckpt["callbacks"]["MC{other}"] == state and ckpt["callbacks"]["RunGuard"] == {"rng": 1}
    move_checkpoint_state(ckpt, {"MC{other}": (new, "last.ckpt")}, fresh=True)   # a fork: its own record of files
    assert ckpt["callbacks"]["MC{other}"] == {"dirpath": new, "best_model_score": None, "best_model_path": ""}
    # a versioned last-vN.ckpt (a folder resumed before run ids) or none recorded yet: last.ckpt again, unless a
    # second callback writes last.ckpt into the same folder (then Lightning's versions are theirs)
    for recorded in (f"{old}/last-v2.ckpt", ""):
        ckpt = {"callbacks": {"MC{a}": dict(state, last_model_path=recorded)}}
        move_checkpoint_state(ckpt, {"MC{a}": (new, "last.ckpt")})
        assert ckpt["callbacks"]["MC{a}"]["last_model_path"] == f"{new}/last.ckpt"
        ckpt = {"callbacks": {"MC{a}": dict(state, last_model_path=recorded)}}
        move_checkpoint_state(ckpt, {"MC{a}": (new, "last.ckpt"), "MC{b}": (new, "last.ckpt")})
        assert ckpt["callbacks"]["MC{a}"]["last_model_path"] == (f"{new}/last-v2.ckpt" if recorded else "")


def test_a_folder_damaged_before_run_ids_gets_its_last_ckpt_back(tmp_path):
    """A folder moved and resumed before this fix holds last-v1.ckpt at the newest step beside a stale last.ckpt:
    `--ckpt_path last` takes the newest step, and the next resume writes last.ckpt again (no last-v2.ckpt)."""
    import shutil

    from ctsr.lit.common import checkpoint_targets
    from ctsr.runs import resolve_last

    ref, _ = _toy_trainer(tmp_path / "ref", steps=8)
    reference = _toy_module(set())
    ref.fit(reference)
    trainer, _ = _toy_trainer(tmp_path / "a", steps=4)
    trainer.fit(_toy_module(set()))
    shutil.move(tmp_path / "a", tmp_path / "b")
    ckpts = tmp_path / "b" / "ckpt"
    trainer, _ = _toy_trainer(tmp_path / "b", steps=6)                  # as before: Lightning alone
    trainer.fit(_toy_module(set()), ckpt_path=str(ckpts / "last.ckpt"))
    damaged = sorted(p.name for p in ckpts.iterdir())
    path, _ = resolve_last(ckpts, tmp_path / "b", lambda msg: None)
    assert load_checkpoint(path)["global_step"] == 6
    trainer, _ = _toy_trainer(tmp_path / "b", steps=8)
    trainer.strategy.checkpoint_io.set_run(None, lambda: checkpoint_targets(trainer))
    module = _toy_module(set())
    trainer.fit(module, ckpt_path=str(path))
    assert load_checkpoint(ckpts / "last.ckpt")["global_step"] == 8
    assert sorted(p.name for p in ckpts.iterdir()) == sorted(damaged + ["epoch=0-step=7.ckpt", "epoch=0-step=8.ckpt"])
    assert resolve_last(ckpts, tmp_path / "b")[0].name == "last.ckpt"
    assert torch.equal(module.w.detach(), reference.w.detach())


def test_run_ids_tell_a_copied_folder_from_a_moved_one(tmp_path):
    import shutil

    from ctsr.runs import (
        adopt_run,
        fork_run_info,
        new_run_info,
        read_run_info,
        stamp,
        write_run_info,
    )

    a, b, c = (tmp_path / "runs" / n for n in "abc")
    info = new_run_info(a)
    write_run_info(a, info)
    ckpt = {"global_step": 4, "ctsr_run": stamp(info)}
    assert adopt_run(a, "last.ckpt", ckpt) == info
    shutil.copytree(a, b)                                               # a copy: both would continue one run
    with pytest.raises(ConfigError, match=r"'.*runs/b' is a copy of the run in '.*runs/a' .*--fork NAME"):
        adopt_run(b, "last.ckpt", ckpt)
    assert adopt_run(a, "last.ckpt", ckpt) == info                      # the original resumes as before
    other = {"id": "f" * 32, "path": "/elsewhere/runs/x"}               # a checkpoint of another run
    with pytest.raises(ConfigError, match="belongs to another run .*never mixed"):
        adopt_run(a, "x.ckpt", {"ctsr_run": other})
    with pytest.raises(ConfigError, match=r"belongs to the run in '.*runs/a'"):
        adopt_run(tmp_path / "runs" / "new", "x.ckpt", ckpt)           # a's checkpoint resumed in a new folder
    shutil.rmtree(b)
    a.rename(c)                                                         # moved or renamed: adopted
    moved = adopt_run(c, "last.ckpt", ckpt)
    assert moved["id"] == info["id"] and moved["path"] == str(c.resolve())
    legacy = adopt_run(tmp_path / "runs" / "old", "last.ckpt", {"global_step": 2})   # from before run ids
    assert legacy["id"] != info["id"] and legacy["path"] == str((tmp_path / "runs" / "old").resolve())
    fork = fork_run_info(tmp_path / "runs" / "f", c, c / "checkpoints" / "last.ckpt", ckpt)
    assert fork["id"] != info["id"] and fork["parent"]["id"] == info["id"] and fork["parent"]["step"] == 4
    write_run_info(tmp_path / "runs" / "f", fork)
    assert read_run_info(tmp_path / "runs" / "f") == fork
    (c / "run.json").write_text("{broken")
    with pytest.raises(ConfigError, match="run.json' is not readable"):
        adopt_run(c, "last.ckpt", ckpt)


def test_a_copied_run_folder_is_refused_and_a_fork_needs_a_free_name(workdir, capsys):
    """As the user sees it (`ctsr fit`): one line each, nothing written."""
    import shutil

    from ctsr.runs import new_run_info, stamp, write_run_info

    base = ["fit", "--config", "experiments/tiny_stage1.yaml", "--trainer.logger.init_args.save_dir", "runs",
            "--trainer.logger.init_args.name", "a"]
    with pytest.raises(SystemExit):
        main(base + ["--print_config"])
    a = workdir / "runs" / "a"
    (a / "checkpoints").mkdir(parents=True)
    (a / "config.yaml").write_text(capsys.readouterr().out)
    info = new_run_info(a)
    write_run_info(a, info)
    atomic_save({"global_step": 2, "state_dict": {}, "ctsr_run": stamp(info)}, a / "checkpoints" / "last.ckpt")
    shutil.copytree(a, workdir / "runs" / "b")
    listing = sorted(p.relative_to(workdir) for p in (workdir / "runs").rglob("*"))
    copy = base[:-1] + ["b", "--ckpt_path", "last"]
    assert main(copy) == 2
    line = _one_line_error(capsys, "is a copy of the run in")
    assert "--fork NAME" in line and str(a) in line
    assert main(copy + ["--fork", "a"]) == 2                             # the fork's folder holds checkpoints
    _one_line_error(capsys, "--fork: the run folder 'runs/a' already holds checkpoints")
    assert main(base[:-1] + ["nothing", "--ckpt_path", "last", "--fork", "c"]) == 2   # no checkpoint to fork
    _one_line_error(capsys, "no checkpoint in")
    assert main(base + ["--fork", "c"]) == 2
    _one_line_error(capsys, "--fork: only with `ctsr fit … --ckpt_path`")
    assert sorted(p.relative_to(workdir) for p in (workdir / "runs").rglob("*")) == listing   # nothing written


def test_export_and_upscale_name_the_step_they_use(tmp_path, capsys, tiny_controllable):
    from PIL import Image

    model = tiny_controllable()
    state = {f"model.generator.unet.{k}": v.detach().clone()
             for k, v in model.generator.unet.named_parameters() if v.requires_grad}
    ckpts = tmp_path / "runs" / "b" / "checkpoints"

    def save(step, name):
        atomic_save({"state_dict": state, "ctsr_generator_config": model.generator.config, "global_step": step,
                     "ctsr_stage1_lora": model.stage1_lora, "ctsr_control": model.control_config}, ckpts / name)

    save(4, "last.ckpt")                      # a folder damaged before run ids: last.ckpt stale, step 6 beside it
    save(6, "epoch=2-step=6.ckpt")
    assert main(["export", str(ckpts / "last.ckpt"), str(tmp_path / "m.safetensors")]) == 0
    err = capsys.readouterr().err
    assert f"ctsr export: using step 4 of {ckpts / 'last.ckpt'} (note: '{ckpts / 'epoch=2-step=6.ckpt'}' beside " \
           f"it holds step 6)" in err
    assert main(["export", str(tmp_path / "runs" / "b"), str(tmp_path / "m2.safetensors")]) == 0  # the run folder
    assert f"ctsr export: using step 6 of {ckpts / 'epoch=2-step=6.ckpt'}" in capsys.readouterr().err
    save(6, "last.ckpt")
    Image.new("RGB", (16, 16), (120, 30, 200)).save(tmp_path / "in.png")
    assert main(["upscale", str(tmp_path / "in.png"), str(tmp_path / "out.png"), "--ckpt",
                 str(tmp_path / "runs" / "b")]) == 0
    lines = [x for x in capsys.readouterr().err.splitlines() if "using step" in x]
    assert lines == [(f"ctsr upscale: using step 6 of {ckpts / 'last.ckpt'} (the newest checkpoint of "
                      f"'{tmp_path / 'runs' / 'b'}')")]
    assert (tmp_path / "out.png").is_file()


def test_run_lock_refuses_a_second_run_and_takes_over_stale_ones(tmp_path, capsys):
    from ctsr.runs import LOCK, RunLock

    lock = RunLock.acquire(tmp_path)
    assert (tmp_path / LOCK).read_text().split()[0] == str(os.getpid())
    with pytest.raises(ConfigError, match="in use by process"):
        RunLock.acquire(tmp_path)
    lock.release()
    assert not (tmp_path / LOCK).exists()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / LOCK).write_text(f"{dead.pid} 1 {os.uname().nodename}\n")
    RunLock.acquire(tmp_path).release()
    assert "stale lock" in capsys.readouterr().err


def test_resume_with_changed_settings_is_refused_naming_the_keys(workdir, capsys):
    base = ["fit", "--config", "experiments/tiny_stage1.yaml", "--trainer.logger.init_args.save_dir", "runs",
            "--trainer.logger.init_args.name", "r"]
    with pytest.raises(SystemExit):
        main(base + ["--print_config"])
    run = workdir / "runs" / "r"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text(capsys.readouterr().out)
    atomic_save({"global_step": 2, "state_dict": {}}, run / "checkpoints" / "last.ckpt")
    assert main(base + ["--ckpt_path", "last", "--model.init_args.lr", "0.5"]) == 2
    line = _one_line_error(capsys, "model.init_args.lr")
    assert "--resume_with_changes" in line
    assert not (run / "config.resume-1.yaml").exists()
    # a mistyped run name: an error, not a new run from step 0
    assert main(base[:-1] + ["rr", "--ckpt_path", "last"]) == 2
    _one_line_error(capsys, "no checkpoint in")
    assert not list((workdir / "runs").glob("rr/checkpoints/*.ckpt"))


def test_changed_keys():
    from ctsr.runs import changed_keys

    old = {"model": {"init_args": {"lr": 1e-3, "betas": [0.9, 0.999]}}, "trainer": {"max_steps": 4}, "ckpt_path": None}
    new = {"model": {"init_args": {"lr": 1e-3, "betas": [0.9, 0.99]}}, "trainer": {"max_steps": 8}, "ckpt_path": "last"}
    assert changed_keys(old, new) == ["model.init_args.betas.1"]


# -- data randomness as a function of (seed, epoch, index) ---------------------------------------------------------
def test_training_items_depend_on_seed_epoch_index_only(sample_dir):
    import random

    from ctsr.data.datasets import EpochSampler, HRTrainDataset
    from ctsr.data.images import list_images

    ds = HRTrainDataset(list_images(sample_dir / "train"), crop_size=32, seed=3)
    random.seed(0)
    torch.manual_seed(0)
    a = ds[(1, 2)]["hr"]
    random.seed(123)
    torch.manual_seed(123)
    assert torch.equal(ds[(1, 2)]["hr"], a)          # global random state plays no part
    assert not torch.equal(ds[(2, 2)]["hr"], a)      # another epoch: another crop
    s = EpochSampler(10, seed=3)
    s.set_epoch(1)
    full = list(s)
    assert sorted(i for _, i in full) == list(range(10)) and all(e == 1 for e, _ in full)
    s.resume_at(1, 4)
    assert list(s) == full[4:]                       # a resumed epoch continues the same order
    assert list(s) == full                           # once
    s.set_epoch(2)
    assert [i for _, i in s] != [i for _, i in full]


def test_datamodule_state_holds_pool_and_position(sample_dir):
    from ctsr.data.datamodule import BicubicDegradation, SRDataModule

    dm = SRDataModule(train_dirs=[str(sample_dir / "train")], crop_size=32, batch_size=1, pool_size=2,
                      degradation=BicubicDegradation(), num_workers=0)
    dm.setup("fit")
    batches = iter(dm.train_dataloader())
    for _ in range(3):
        dm.on_after_batch_transfer(next(batches), 0)
    state = dm.state_dict()
    assert state["pool"]["hr"].shape[0] == 2
    buf = __import__("io").BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    restored = torch.load(buf, weights_only=True)        # plain types only: loadable without pickle code
    dm2 = SRDataModule(train_dirs=[str(sample_dir / "train")], crop_size=32, batch_size=1, pool_size=2,
                       degradation=BicubicDegradation(), num_workers=0)
    dm2.load_state_dict(restored)
    assert torch.equal(dm2._pool["hr"], dm._pool["hr"])


# -- 5. the ablation runner ------------------------------------------------------------------------------------------
def test_runner_validates_a_run_whose_final_validation_was_cut(tmp_path):
    from ctsr.callbacks.t_sweep import write_tables
    from ctsr.experiments import sweep

    run = sweep.plan("ablation-distill", "tiny", tmp_path)[0]
    calls = []

    def launcher(argv):
        calls.append(argv[0])
        if argv[0] == "fit":  # training reaches step 4, the checkpoint is written, then the process dies
            atomic_save({"global_step": 4}, run.folder / "checkpoints" / "last.ckpt")
            write_tables(run.folder, {0.0: {"psnr": 1.0}}, "p", "val metrics at step 2")  # an earlier validation
        else:
            assert argv[-2:] == ["--ckpt_path", str(run.folder / "checkpoints" / "last.ckpt")]
            write_tables(run.folder, {0.0: {"psnr": 2.0}}, "p", "val metrics at step 4")
        return 0

    sweep.execute([run], launcher, log=lambda m: None)
    assert calls == ["fit", "validate"]
    assert json.loads((run.folder / sweep.DONE).read_text())["step"] == 4
    assert sweep.read_metrics(run.folder / "metrics.csv")[0.0]["psnr"] == 2.0
    assert sweep.metrics_step(run.folder) == 4


# -- 6. upscale inputs and outputs ------------------------------------------------------------------------------------
def test_upscale_lists_unusable_inputs_and_refuses_image_named_folders(tmp_path, capsys):
    from PIL import Image

    from ctsr.inference.upscale import plan_jobs, unusable_inputs

    src = tmp_path / "in"
    src.mkdir()
    Image.new("RGB", (16, 16), (10, 200, 30)).save(src / "a.png")
    Image.new("RGB", (16, 16)).save(src / "anim.gif")
    (src / "gone.png").symlink_to(tmp_path / "nowhere.png")
    (src / "notes.txt").write_text("x")
    failed, other = unusable_inputs(src)
    assert {p.name: r for p, r in failed} == {"anim.gif": ".gif is not supported (use .png, .jpg, .jpeg, .webp, "
                                                          ".bmp, .tif, .tiff)", "gone.png": "broken link"}
    assert [p.name for p in other] == ["notes.txt"]
    with pytest.raises(ConfigError, match="OUTPUT.*gif"):
        plan_jobs(src / "a.png", tmp_path / "x.gif", [0.0], "png", False)
    assert not (tmp_path / "x.gif").exists()

    model = _tiny_export(tmp_path / "m.safetensors")
    rc = main(["upscale", str(src), str(tmp_path / "out"), "--ckpt", str(model), "--tile", "0", "--vae-tile", "0"])
    out = capsys.readouterr()
    assert rc == 1                                       # not everything could be upscaled
    assert (tmp_path / "out" / "a.png").is_file()
    summary = out.out.strip().splitlines()[-1]
    assert "anim.gif" in summary and "gone.png" in summary and "notes.txt" in summary, summary

    # a model whose output is non-finite: that image fails, nothing is written for it (no black PNG)
    from ctsr.inference.upscale import Upscaler

    real = Upscaler.__call__
    try:
        Upscaler.__call__ = lambda self, x, ts: [torch.full((x.shape[0], 3, 4 * x.shape[-2], 4 * x.shape[-1]),
                                                            float("nan")) for _ in ts]
        rc = main(["upscale", str(src / "a.png"), str(tmp_path / "nan.png"), "--ckpt", str(model)])
    finally:
        Upscaler.__call__ = real
    out = capsys.readouterr()
    assert rc == 1 and not (tmp_path / "nan.png").exists()
    assert "non-finite" in out.err and "0 of 1 image(s) upscaled" in out.out


# -- slow: real processes killed by signals ------------------------------------------------------------------------
FAST_RUN = """
seed_everything: 0
trainer:
  max_steps: {steps}
  val_check_interval: 2
  limit_val_batches: 1
  log_every_n_steps: 1
  enable_progress_bar: false
  enable_model_summary: false
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {{save_last: true, every_n_train_steps: 2, save_top_k: -1}}
    - class_path: ctsr.callbacks.t_sweep.TSweepEvaluation
      init_args: {{metrics: [psnr], metric_weights: random, num_images: 1}}
    - class_path: ctsr_faults.LossLog
      init_args: {{path: {log}}}
"""


def _ctsr(argv, cwd, timeout=900, fault: str | None = None):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(SCRIPTS), os.environ.get("PYTHONPATH", "")]),
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
    env.pop("CTSR_FAULT", None)
    if fault is not None:  # tests/scripts/sitecustomize.py adds KillAt outside the run's config
        env["CTSR_FAULT"] = fault
    return subprocess.run([sys.executable, "-m", "ctsr.cli", *argv], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)


def _kill(moment, step, sig="SIGKILL"):
    return ["--trainer.callbacks+=ctsr_faults.KillAt", f"--trainer.callbacks.moment={moment}",
            f"--trainer.callbacks.step={step}", f"--trainer.callbacks.signal={sig}"]


def _losses(path: Path) -> dict[int, float]:
    out = {}
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        out[rec["step"]] = rec["loss"]  # a step run twice (before and after a kill): the later one counts
    return out


def _weights(path: Path) -> dict:
    return load_checkpoint(path)["state_dict"]


def _exact_resume(workdir, base: list[str], steps: int = 6, term_at: int = 3, kill_at: int = 5):
    (workdir / "ref.yaml").write_text(FAST_RUN.format(steps=steps, log=workdir / "ref.jsonl"))
    (workdir / "cut.yaml").write_text(FAST_RUN.format(steps=steps, log=workdir / "cut.jsonl"))
    ref = _ctsr(base + ["--config", "ref.yaml", "--trainer.logger.init_args.name", "ref"], workdir)
    assert ref.returncode == 0, ref.stderr[-3000:]
    cut = base + ["--config", "cut.yaml", "--trainer.logger.init_args.name", "cut"]
    # SIGTERM at an odd step (between checkpoints): last.ckpt at that step, exit status 143
    p = _ctsr(cut + _kill("train_batch_end", term_at, "SIGTERM"), workdir)
    assert p.returncode == 143, p.stderr[-3000:]
    assert f"interrupted: SIGTERM at step {term_at}" in p.stderr and "Traceback" not in p.stderr
    assert load_checkpoint(workdir / "runs" / "cut" / "checkpoints" / "last.ckpt")["global_step"] == term_at
    # resumed (the fault-injection callback differs: allowed with --resume_with_changes), then kill -9 after
    # an odd step (the checkpoint of the step before is the last one written)
    resume = ["--ckpt_path", "last", "--resume_with_changes", "true"]
    p = _ctsr(cut + resume + _kill("train_batch_end", kill_at), workdir)
    assert p.returncode == -signal.SIGKILL, p.stderr[-3000:]
    assert (workdir / "runs" / "cut" / "run.lock").is_file()   # left behind by the kill: stale
    p = _ctsr(cut + resume, workdir)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "stale lock" in p.stderr
    ref_losses, cut_losses = _losses(workdir / "ref.jsonl"), _losses(workdir / "cut.jsonl")
    assert sorted(ref_losses) == list(range(1, steps + 1))
    assert cut_losses == ref_losses                               # bit-exact, every step
    a = _weights(workdir / "runs" / "ref" / "checkpoints" / "last.ckpt")
    b = _weights(workdir / "runs" / "cut" / "checkpoints" / "last.ckpt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (workdir / "runs" / "cut" / "config.resume-1.yaml").is_file()
    assert (workdir / "runs" / "cut" / "config.resume-2.yaml").is_file()
    return workdir / "runs" / "ref" / "checkpoints" / "last.ckpt"


@pytest.mark.slow
def test_exact_resume_after_sigterm_and_kill_stage1(workdir):
    """Stage 1, 6 steps over two epochs (4 images, batch 1): SIGTERM at 3, kill -9 at 5 (last checkpoint 4)."""
    _exact_resume(workdir, ["fit", "--config", "experiments/tiny_stage1.yaml",
                            "--trainer.logger.init_args.save_dir", "runs"])


@pytest.mark.slow
def test_exact_resume_after_sigterm_and_kill_stage2(workdir):
    """Stage 2 (T_S = the generator as built: exactness does not depend on the stage-1 weights), 4 steps:
    SIGTERM at 1, kill -9 at 3 (last checkpoint 2)."""
    _exact_resume(workdir, ["fit", "--config", "experiments/tiny_stage2.yaml", "--trainer.logger.init_args.save_dir",
                            "runs", "--model.init_args.stage1_ckpt", "null"], steps=4, term_at=1, kill_at=3)


@pytest.mark.slow
@pytest.mark.parametrize("moment", ["train_batch_end:2", "validation_start:4", "validation_batch:4"])
def test_ablation_runner_survives_a_kill_at_any_moment(workdir, moment):
    from ctsr.experiments import sweep

    where, step = moment.split(":")
    run = sweep.plan("ablation-distill", "tiny", "runs")[0]
    killed = _ctsr(run.argv, workdir, fault=f"{where}:{step}:SIGKILL")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert not (run.folder / sweep.DONE).exists()

    def launcher(argv):
        p = _ctsr(list(argv), workdir)
        assert "Traceback" not in p.stderr, p.stderr[-3000:]
        return p.returncode

    again = sweep.plan("ablation-distill", "tiny", "runs")[0]
    sweep.execute([again], launcher, log=lambda m: None)
    assert json.loads((run.folder / sweep.DONE).read_text())["step"] == 4
    assert sweep.metrics_step(run.folder) == 4
    _, rows = sweep.collect("ablation-distill", "tiny", "runs", "results")
    assert rows[0]["run"] == "without-distill" and rows[0]["psnr"] != ""
    assert float(rows[0]["psnr"]) == pytest.approx(sweep.read_metrics(run.folder / "metrics.csv")[0.0]["psnr"])


# -- slow: a run folder renamed, copied or moved between file systems, resumed twice ------------------------------
STAGE1 = ["fit", "--config", "experiments/tiny_stage1.yaml", "--trainer.logger.init_args.save_dir", "runs"]


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, sample_dir):
    """An uninterrupted 8-step tiny stage-1 run: (per-step losses, final weights), which every renamed, copied and
    forked, or moved run must repeat bit for bit."""
    root = tmp_path_factory.mktemp("reference")
    (root / "data").mkdir()
    (root / "data" / "samples").symlink_to(sample_dir)
    (root / "experiments").symlink_to(ROOT / "experiments")
    (root / "ref.yaml").write_text(FAST_RUN.format(steps=8, log=root / "ref.jsonl"))
    p = _ctsr(STAGE1 + ["--config", "ref.yaml", "--trainer.logger.init_args.name", "ref"], root)
    assert p.returncode == 0, p.stderr[-3000:]
    return _losses(root / "ref.jsonl"), _weights(root / "runs" / "ref" / "checkpoints" / "last.ckpt")


def _first_four_steps(workdir) -> Path:
    (workdir / "cut.yaml").write_text(FAST_RUN.format(steps=4, log=workdir / "cut.jsonl"))
    p = _ctsr(STAGE1 + ["--config", "cut.yaml", "--trainer.logger.init_args.name", "a"], workdir)
    assert p.returncode == 0, p.stderr[-3000:]
    return workdir / "runs" / "a"


def _resume_twice(workdir, first: list[str], second: list[str], ckpt_dir: Path, reference) -> None:
    """Resume to step 6 with ``first``, to step 8 with ``second``: last.ckpt is the newest step after each, no
    versioned duplicate appears, and losses and weights are the uninterrupted run's, bit for bit."""
    for steps, argv in ((6, first), (8, second)):
        p = _ctsr(STAGE1 + ["--config", "cut.yaml", *argv, "--ckpt_path", "last", "--trainer.max_steps", str(steps)],
                  workdir)
        assert p.returncode == 0, p.stderr[-3000:]
        assert "Traceback" not in p.stderr and "dirpath has changed" not in p.stderr, p.stderr[-3000:]
        assert load_checkpoint(ckpt_dir / "last.ckpt")["global_step"] == steps
    names = sorted(p.name for p in ckpt_dir.glob("*.ckpt"))
    assert not [n for n in names if "-v" in n], names
    ref_losses, ref_weights = reference
    assert _losses(workdir / "cut.jsonl") == ref_losses
    weights = _weights(ckpt_dir / "last.ckpt")
    assert weights.keys() == ref_weights.keys() and all(torch.equal(weights[k], ref_weights[k]) for k in weights)


@pytest.mark.slow
def test_a_renamed_run_resumes_from_where_it_stopped(workdir, reference_run, capsys):
    """The issue's case: 4 steps in runs/a, the folder renamed runs/b (and its name in config.yaml), resumed to 6
    and to 8 — last.ckpt at 6 then 8, no last-v1.ckpt or -v1 duplicates, the uninterrupted run's losses and weights;
    `ctsr upscale` of the run folder names the step it uses."""
    a = _first_four_steps(workdir)
    run_id = json.loads((a / "run.json").read_text())["id"]
    b = workdir / "runs" / "b"
    a.rename(b)
    (b / "config.yaml").write_text((b / "config.yaml").read_text().replace("name: a\n", "name: b\n"))
    name = ["--trainer.logger.init_args.name", "b"]
    _resume_twice(workdir, name, name, b / "checkpoints", reference_run)
    assert sorted(p.name for p in (b / "checkpoints").glob("*.ckpt")) == [
        "epoch=0-step=2.ckpt", "epoch=0-step=4.ckpt", "epoch=1-step=6.ckpt", "epoch=1-step=8.ckpt", "last.ckpt"]
    assert json.loads((b / "run.json").read_text()) | {"created": None} == {"id": run_id, "path": str(b.resolve()),
                                                                             "created": None}
    assert load_checkpoint(b / "checkpoints" / "last.ckpt")["ctsr_run"] == {"id": run_id, "path": str(b.resolve())}
    from PIL import Image

    Image.new("RGB", (16, 16), (120, 30, 200)).save(workdir / "in.png")
    assert main(["upscale", "in.png", "out.png", "--ckpt", "runs/b"]) == 0
    assert "ctsr upscale: using step 8 of runs/b/checkpoints/last.ckpt" in capsys.readouterr().err


@pytest.mark.slow
def test_a_copied_run_is_refused_and_forked_on_request(workdir, reference_run):
    """runs/a copied to runs/a2: resuming the copy is refused in one line (nothing written); `--fork f` continues
    the copy's checkpoint as the new run runs/f (a new id, its lineage in run.json), resumed again: exact."""
    import shutil

    a = _first_four_steps(workdir)
    source = json.loads((a / "run.json").read_text())
    copy = workdir / "runs" / "a2"
    shutil.copytree(a, copy)
    listing = sorted(p.relative_to(workdir) for p in (workdir / "runs").rglob("*"))
    p = _ctsr(STAGE1 + ["--config", "cut.yaml", "--trainer.logger.init_args.name", "a2", "--ckpt_path", "last",
                        "--trainer.max_steps", "6"], workdir)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr[-3000:]
    line = [x for x in p.stderr.splitlines() if x.startswith("ctsr")][-1]
    assert line.startswith("ctsr: error: 'runs/a2' is a copy of the run in") and "--fork NAME" in line, line
    assert sorted(p.relative_to(workdir) for p in (workdir / "runs").rglob("*")) == listing
    f = workdir / "runs" / "f"
    _resume_twice(workdir, ["--trainer.logger.init_args.name", "a2", "--fork", "f"],
                  ["--trainer.logger.init_args.name", "f"], f / "checkpoints", reference_run)
    info = json.loads((f / "run.json").read_text())
    assert info["id"] != source["id"] and info["path"] == str(f.resolve())
    assert info["parent"] == {"id": source["id"], "path": str(copy.resolve()), "step": 4,
                              "checkpoint": str((copy / "checkpoints" / "last.ckpt").resolve())}
    assert sorted(p.name for p in (f / "checkpoints").glob("*.ckpt")) == [
        "epoch=1-step=6.ckpt", "epoch=1-step=8.ckpt", "last.ckpt"]
    assert sorted(p.relative_to(workdir) for p in copy.rglob("*")) == [
        x for x in listing if x.parts[:2] == ("runs", "a2") and x != Path("runs", "a2")]   # the copy untouched


@pytest.mark.slow
def test_a_run_moved_to_another_file_system_resumes_exactly(workdir, reference_run):
    """runs/a moved to another file system (/dev/shm; a copy and a delete, not a rename) and resumed there twice
    with the new save_dir: adopted silently, exact. Skipped when /dev/shm is on the same file system."""
    import shutil
    import tempfile

    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(workdir).st_dev:
        pytest.skip(f"no second file system: /dev/shm and '{workdir}' are on one")
    other = Path(tempfile.mkdtemp(prefix="ctsr-move-", dir=shm))
    try:
        a = _first_four_steps(workdir)
        run_id = json.loads((a / "run.json").read_text())["id"]
        moved = other / "runs" / "a"
        shutil.move(str(a), str(moved))
        assert not a.exists() and os.stat(moved).st_dev != os.stat(workdir).st_dev
        where = ["--trainer.logger.init_args.save_dir", str(other / "runs"), "--trainer.logger.init_args.name", "a"]
        _resume_twice(workdir, where, where, moved / "checkpoints", reference_run)
        assert json.loads((moved / "run.json").read_text())["id"] == run_id
        assert json.loads((moved / "run.json").read_text())["path"] == str(moved.resolve())
    finally:
        shutil.rmtree(other, ignore_errors=True)
