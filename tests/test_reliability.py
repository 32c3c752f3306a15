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

from ctsr.checkpoints import atomic_save, load_checkpoint
from ctsr.cli import main
from ctsr.errors import ConfigError, NonFiniteError

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "tests" / "scripts"
pytestmark = pytest.mark.usefixtures("one_thread")


# -- helpers ---------------------------------------------------------------------------------------------------------
class _Payload:
    """Unpickling this runs ``exec``: it writes the marker file (what a poisoned checkpoint would do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def crafted_pickle(path: Path, marker: Path) -> Path:
    """A file that looks like a Lightning checkpoint (torch zip format) whose unpickling writes ``marker``."""
    torch.save({"state_dict": {}, "global_step": 1, "payload": _Payload(marker)}, path)
    return path


def _one_line_error(capsys, text: str | None = None) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line.startswith("ctsr")]
    assert "Traceback" not in err, err[-3000:]
    assert lines and lines[-1].startswith(("ctsr: error:", "ctsr upscale: error:")), err[-2000:]
    if text is not None:
        assert text in lines[-1], lines[-1]
    return lines[-1]


@pytest.fixture(autouse=True)
def _log_streams_to_current_stderr():
    """Lightning's log handlers keep the stderr of the test that imported it (closed later by pytest's capture):
    point them at this test's stderr, so what a user would see is what the test reads."""
    import logging

    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "lightning.pytorch.core"):
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                handler.stream = sys.stderr
    yield


@pytest.fixture()
def workdir(tmp_path, monkeypatch, sample_dir):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "samples").symlink_to(sample_dir)
    (tmp_path / "experiments").symlink_to(ROOT / "experiments")
    monkeypatch.chdir(tmp_path)
    return tmp_path


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
    evil = crafted_pickle(workdir / "evil.ckpt", marker)
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

    import ctsr.cli

    def terminated(argv):
        raise SIGTERMException  # Lightning's own SIGTERM path (a SystemExit without code: status 0)

    monkeypatch.setattr(ctsr.cli, "_lightning_cli", terminated)
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
