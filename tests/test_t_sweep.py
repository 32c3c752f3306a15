"""TSweepEvaluation: one row per t, finite values, TensorBoard tags, eval from a checkpoint, DDP = 1 process, images
to every logger (TensorBoard, a W&B-style and an MLflow-style stand-in), the distance to the fidelity teacher's
image, padding instead of cropping."""
import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ctsr.callbacks.t_sweep import TSweepEvaluation, pad_to_multiple, sweep_images
from ctsr.cli import main
from ctsr.data.datamodule import BicubicDegradation, SRDataModule
from ctsr.data.images import read_image
from ctsr.errors import ConfigError, MissingWeightsError
from ctsr.lit.evaluate import TrainedModel
from ctsr.metrics import psnr, quantize_8bit
from ctsr.models.generator import OneStepGenerator

ROOT = Path(__file__).resolve().parents[1]
T = [0.0, 0.5, 1.0]


@pytest.fixture(scope="module")
def model_file(tiny_model_file):
    return tiny_model_file(stage1_lora=False)


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
    assert "d_fidelity_psnr" not in rows[0]  # no fidelity teacher: no distance columns
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
    with pytest.raises(MissingWeightsError, match="alexnet-owt-7be5be79.pth"):
        TSweepEvaluation(metrics=["psnr", "lpips"])  # LPIPS-Alex (pyiqa), as OSEDiff
    with pytest.raises(MissingWeightsError, match="vgg16"):
        TSweepEvaluation(metrics=["psnr", "lpips_vgg"])
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


# -- images to every logger, distance to the fidelity teacher, padding -------------------------------------------
class FakeWandbLogger(L.pytorch.loggers.logger.Logger):
    """W&B's image API (``WandbLogger.log_image(key, images, step)``), recorded; no network, no wandb."""

    def __init__(self):
        super().__init__()
        self.images: list[tuple[str, list, int]] = []

    @property
    def name(self):
        return "fake-wandb"

    @property
    def version(self):
        return 0

    def log_metrics(self, metrics, step=None):
        pass

    def log_hyperparams(self, params, *args, **kwargs):
        pass

    def log_image(self, key, images, step=None, **kwargs):
        self.images.append((key, images, step))


class FakeMlflowClient:
    def __init__(self):
        self.calls = []

    def log_image(self, run_id, image, artifact_file):
        self.calls.append(("image", run_id, artifact_file, image.shape))

    def log_figure(self, run_id, figure, artifact_file):
        self.calls.append(("figure", run_id, artifact_file, type(figure).__name__))

    def log_text(self, run_id, text, artifact_file):
        self.calls.append(("text", run_id, artifact_file, text))


class FakeMlflowLogger(FakeWandbLogger):
    """MLflow's shape: ``experiment`` is an MlflowClient, ``run_id`` the run; no ``log_image`` on the logger."""

    log_image = None
    run_id = "run-1"

    def __init__(self):
        super().__init__()
        self._client = FakeMlflowClient()

    @property
    def experiment(self):
        return self._client


def test_grid_and_figure_reach_every_logger(model_file, sample_dir, tmp_path):
    cb = TSweepEvaluation(t_values=T, metrics=["psnr", "lpips"], metric_weights="random", num_images=2)
    tb = L.pytorch.loggers.TensorBoardLogger(tmp_path, name="run", version="")
    wandb, mlflow = FakeWandbLogger(), FakeMlflowLogger()
    trainer = L.Trainer(accelerator="cpu", logger=[tb, wandb, mlflow], callbacks=[cb], enable_progress_bar=False)
    trainer.test(TrainedModel(str(model_file)), _data(sample_dir))
    keys = {key: (images, step) for key, images, step in wandb.images}
    grid_key = next(k for k in keys if k.startswith("test/grid"))
    (grid,), step = keys[grid_key]
    assert grid.shape == (2 * 64, 5 * 64, 3) and grid.dtype == np.uint8 and step == 0
    (fig,), _ = keys["test/fidelity-realness"]
    assert fig.ndim == 3 and fig.shape[2] == 3 and fig.std() > 0  # a rendered figure, not a blank
    kinds = [(c[0], c[2]) for c in mlflow.experiment.calls]
    assert ("figure", "test_fidelity-realness_step0.png") in kinds
    assert any(k == "image" and name.startswith("test_grid") for k, name in kinds)
    assert ("text", "test_protocol_step0.txt") in kinds
    ea = EventAccumulator(str(next((tmp_path / "run").glob("events.out.tfevents.*"))), size_guidance={"images": 0})
    ea.Reload()
    assert "test/fidelity-realness" in ea.Tags()["images"] and any(t.startswith("test/grid") for t in ea.Tags()["images"])


def _pairs(sample_dir, root):
    """Two real pairs whose LR (13x15) is not a multiple of 8: HR crops 52x60, LR = PIL bicubic /4."""
    (root / "LR").mkdir(parents=True), (root / "HR").mkdir()
    for f in sorted((sample_dir / "val").glob("*.png")):
        hr = Image.open(f).convert("RGB").crop((200, 150, 260, 202))
        hr.save(root / "HR" / f"{f.stem}.png")
        hr.resize((15, 13), Image.BICUBIC).save(root / "LR" / f"{f.stem}.png")
    return root


def test_distance_to_the_fidelity_teacher_image(model_file, sample_dir, tmp_path):
    """d_fidelity_psnr(t) = mean over images of PSNR(SR(t), x_f), x_f = bicubic ×4 of the LR (the teacher)."""
    pairs = _pairs(sample_dir, tmp_path / "pairs")
    data = SRDataModule(test_pairs=[[str(pairs / "LR"), str(pairs / "HR")]], val_crop_size=None, num_workers=0)
    cb = TSweepEvaluation(t_values=[0.0, 1.0], metrics=["psnr"], metric_weights="random", save_images=True)
    logger = L.pytorch.loggers.TensorBoardLogger(tmp_path, name="run", version="")
    L.Trainer(accelerator="cpu", logger=logger, callbacks=[cb], enable_progress_bar=False).test(
        TrainedModel(str(model_file), fidelity_teacher="bicubic"), data)
    for t in (0.0, 1.0):
        expected = []
        for f in sorted((pairs / "LR").glob("*.png")):
            lr = read_image(f)[None]
            x_f = quantize_8bit(F.interpolate(lr, scale_factor=4, mode="bicubic", align_corners=False).clamp(0, 1))
            sr = read_image(tmp_path / "run" / "images" / "test" / f"t={t:g}" / f.name)[None]
            assert sr.shape == x_f.shape == (1, 3, 52, 60)  # whole image: LR padded, SR cropped back
            expected.append(psnr(sr, x_f).item())
        assert cb.last_rows[t]["d_fidelity_psnr"] == pytest.approx(np.mean(expected), abs=1e-6)
        assert cb.last_rows[t]["d_fidelity_lpips"] >= 0
    rows = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    assert list(rows[0]) == ["t", "psnr", "d_fidelity_psnr", "d_fidelity_lpips"]
    assert "PSNR to x_f | LPIPS to x_f" in (tmp_path / "run" / "metrics.md").read_text()
    ea = EventAccumulator(str(next((tmp_path / "run").glob("events.out.tfevents.*"))))
    ea.Reload()
    assert "test/d_fidelity_psnr/t=1" in ea.Tags()["scalars"] and "test/d_fidelity_lpips/t=0" in ea.Tags()["scalars"]


def test_sweep_pads_instead_of_cropping(model_file):
    module = TrainedModel(str(model_file))
    g = torch.Generator().manual_seed(0)
    odd = torch.rand(1, 3, 13, 15, generator=g)
    out = sweep_images(module, odd, [0.0, 1.0], "adain")
    assert all(o.shape == (1, 3, 52, 60) for o in out.values())
    even = torch.rand(1, 3, 16, 16, generator=g)  # already aligned: exactly the model's own sweep, no padding
    direct = module.model.sweep(even, [0.5])[0].float().clamp(0, 1)
    assert torch.equal(sweep_images(module, even, [0.5], "none")[0.5], direct)
    assert pad_to_multiple(odd, 8).shape[-2:] == (16, 16)


def test_predict_writes_the_images_per_t(model_file, sample_dir, tmp_path):
    pairs = _pairs(sample_dir, tmp_path / "pairs")
    data = SRDataModule(test_pairs=[[str(pairs / "LR"), str(pairs / "HR")]], val_crop_size=None, num_workers=0)
    cb = TSweepEvaluation(t_values=[0.0, 1.0], metrics=["psnr"], color="none", save_images=str(tmp_path / "out"))
    trainer = L.Trainer(accelerator="cpu", logger=False, callbacks=[cb], enable_progress_bar=False,
                        default_root_dir=tmp_path)
    preds = trainer.predict(TrainedModel(str(model_file), t=1.0), data)
    names = sorted(f.name for f in (pairs / "LR").glob("*.png"))
    for t in ("0", "1"):
        assert sorted(f.name for f in (tmp_path / "out" / "predict" / f"t={t}").glob("*.png")) == names
    assert preds[0].shape == (1, 3, 52, 60)  # predict_step pads too
    saved = read_image(tmp_path / "out" / "predict" / "t=1" / names[0])[None]
    assert torch.equal(saved, quantize_8bit(preds[0]))  # the same SR(t=1), no colour correction asked
