"""TSweepEvaluation: one row per t, finite values, TensorBoard tags, eval from a checkpoint, DDP = 1 process."""
import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ctsr.callbacks.t_sweep import TSweepEvaluation
from ctsr.cli import main
from ctsr.data.datamodule import BicubicDegradation, SRDataModule
from ctsr.errors import ConfigError, MissingWeightsError
from ctsr.lit.evaluate import TrainedModel
from ctsr.models.control import ControllableSR
from ctsr.models.generator import OneStepGenerator

ROOT = Path(__file__).resolve().parents[1]
T = [0.0, 0.5, 1.0]


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    torch.manual_seed(0)
    gen = OneStepGenerator("tiny")
    stage1 = {n: p.detach().clone() for n, p in gen.named_parameters() if p.requires_grad}
    model = ControllableSR.from_stage1(gen, stage1)
    with torch.no_grad():
        for n, p in model.generator.unet.named_parameters():
            if "lora_B.control" in n:
                p.normal_(0, 0.05)  # a control that does something
    return model.export(tmp_path_factory.mktemp("model") / "tiny.safetensors")


def _data(sample_dir):
    return SRDataModule(test_dirs=[str(sample_dir / "val")], val_dirs=[str(sample_dir / "val")], val_crop_size=64,
                        val_batch_size=2, num_workers=0, degradation=BicubicDegradation())


def test_sweep_writes_tables_and_tensorboard(model_file, sample_dir, tmp_path):
    cb = TSweepEvaluation(t_values=T, metrics=["psnr", "ssim", "lpips"], metric_weights="random", num_images=2)
    logger = L.pytorch.loggers.TensorBoardLogger(tmp_path, name="run", version="")
    trainer = L.Trainer(accelerator="cpu", logger=logger, callbacks=[cb], enable_progress_bar=False)
    trainer.test(TrainedModel(str(model_file)), _data(sample_dir))
    run = tmp_path / "run"
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert [float(r["t"]) for r in rows] == T
    assert all(math.isfinite(float(r[k])) for r in rows for k in ("psnr", "ssim", "lpips"))
    assert len({r["psnr"] for r in rows}) > 1  # t changes the output
    md = (run / "metrics.md").read_text()
    assert "PSNR↑ | SSIM↑ | LPIPS↓" in md and "Protocol: RANDOM WEIGHTS" in md and "crop border 0" in md
    ea = EventAccumulator(str(next(run.glob("events.out.tfevents.*"))), size_guidance={"images": 0})
    ea.Reload()
    tags = ea.Tags()
    for t in ("0", "0.5", "1"):
        assert f"test/psnr/t={t}" in tags["scalars"]
    assert any(tag.startswith("test/grid") for tag in tags["images"])
    assert "test/fidelity-realness" in tags["images"]  # the matplotlib figure, as an image
    # the grid: 2 images stacked, each LR | 3 SR | HR side by side
    grid = ea.Images(next(tag for tag in tags["images"] if tag.startswith("test/grid")))[0]
    assert (grid.width, grid.height) == (5 * 64, 2 * 64)


def test_eval_config_runs_from_a_checkpoint(model_file, sample_dir, tmp_path, monkeypatch):
    """`ctsr test --config experiments/eval.yaml --ckpt_path …` on a real stage-2 checkpoint (one training step)."""
    from ctsr.lit.stage2 import ControllabilityDistillation
    from ctsr.models.teachers import AnchoredTeacher

    module = ControllabilityDistillation(OneStepGenerator("tiny"), None, AnchoredTeacher("bicubic"))
    data = SRDataModule(train_dirs=[str(sample_dir / "train")], crop_size=32, num_workers=0,
                        degradation=BicubicDegradation())
    trainer = L.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(module, data)
    trainer.save_checkpoint(tmp_path / "stage2.ckpt")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "small.yaml").write_text(f"""
trainer: {{accelerator: cpu, precision: 32-true, enable_progress_bar: false}}
data:
  init_args: {{test_pairs: [], test_dirs: [{sample_dir / 'val'}], val_crop_size: 64, num_workers: 0}}
""")
    (tmp_path / "cb.yaml").write_text("""
trainer:
  callbacks:
    - class_path: ctsr.callbacks.t_sweep.TSweepEvaluation
      init_args: {t_values: [0.0, 1.0], metrics: [psnr, ssim], metric_weights: random}
""")
    code = main(["test", "--config", str(ROOT / "experiments" / "eval.yaml"), "--config", "small.yaml",
                 "--config", "cb.yaml", "--ckpt_path", str(tmp_path / "stage2.ckpt")])
    assert code == 0
    rows = list(csv.DictReader(open(tmp_path / "runs" / "eval" / "metrics.csv")))
    assert [r["t"] for r in rows] == ["0", "1"]


def test_missing_metric_weights_fail_before_any_image(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(MissingWeightsError, match="vgg16"):
        TSweepEvaluation(metrics=["psnr", "lpips"])
    TSweepEvaluation(metrics=["psnr", "ssim"])  # the subset that needs no weights still works
    with pytest.raises(ConfigError, match="t_values"):
        TSweepEvaluation(t_values=[0.0, 1.5], metrics=["psnr"])


def test_ddp_evaluation_equals_one_process(model_file, sample_dir, tmp_path):
    """The same evaluation in one process (here) and in two gloo processes (a subprocess) gives the same numbers."""
    cb = TSweepEvaluation(t_values=[0.0, 0.5, 1.0], metrics=["psnr", "ssim", "lpips", "fid"], metric_weights="random")
    data = SRDataModule(test_dirs=[str(sample_dir / "val")], val_crop_size=64, val_batch_size=1, num_workers=0,
                        degradation=BicubicDegradation())
    L.Trainer(accelerator="cpu", logger=False, callbacks=[cb], enable_progress_bar=False,
              default_root_dir=tmp_path).test(TrainedModel(str(model_file)), data)
    single = {f"{t:g}": row for t, row in cb.last_rows.items()}

    out = tmp_path / "rows2.json"
    script = Path(__file__).parent / "scripts" / "ddp_eval.py"
    proc = subprocess.run([sys.executable, str(script), str(model_file), str(sample_dir / "val"), str(out), "2"],
                          env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp = {f"{float(t):g}": row for t, row in json.loads(out.read_text()).items()}
    assert single.keys() == ddp.keys()
    for t, row in single.items():
        for name, value in row.items():
            assert math.isclose(value, ddp[t][name], rel_tol=1e-4, abs_tol=1e-5), (t, name, value, ddp[t][name])
