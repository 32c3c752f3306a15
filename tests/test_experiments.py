"""The paper's experiments as commands: the ablation registry, dry runs, skip/resume, the collected tables, and the
linear-combination baseline of Table 1."""
import csv
import math
from pathlib import Path

import pytest
import torch
import yaml

from ctsr.experiments import linear_combination as lc
from ctsr.experiments import sweep

ROOT = Path(__file__).resolve().parents[1]

TABLE6 = {
    "lambda_rn": [0.6, 0.8, 1.0, 1.2, 1.4],
    "lambda_fl": [1.6, 1.8, 2.0, 2.2, 2.4],
    "gamma_time": [4.5, 5.0, 5.5, 6.0, 6.5, 0.0],
}
DEFAULTS = {"lambda_rn": 1.0, "lambda_fl": 2.0, "gamma_time": 5.5}


def _never(argv):
    raise AssertionError(f"nothing should run, got {argv}")


def test_registry_is_the_table6_grid():
    exp = sweep.EXPERIMENTS["ablation-lambda"]
    assert len(exp.variants) == 16
    got = {}
    for v in exp.variants:
        got.setdefault(v.factor, []).append(float(v.value))
    assert got == TABLE6
    for v in exp.variants:
        if float(v.value) == DEFAULTS[v.factor]:  # the defaults train once, shared by the three blocks
            assert v.configs == () and v.run_name == "defaults"
            continue
        (path,) = v.configs
        text = (ROOT / path).read_text()
        override = yaml.safe_load(text)["model"]["init_args"]
        assert override == {v.factor: float(v.value)}, path  # each file changes exactly the factor it names
        assert text.splitlines()[0] == "# base: stage1.yaml"
    runs = sweep.plan("ablation-lambda", "paper", "runs")
    assert len(runs) == 14 and len({r.folder for r in runs}) == 14


def test_every_registered_file_exists_and_stage2_files_name_their_base():
    for exp in sweep.EXPERIMENTS.values():
        for v in exp.variants:
            for f in v.files("paper") + v.files("tiny"):
                assert (ROOT / f).is_file(), f
                first = (ROOT / f).read_text().splitlines()[0]
                assert first == f"# base: {exp.base}.yaml", f


def test_paper_dry_run_prints_commands_and_touches_nothing(tmp_path, capsys):
    runs_dir, results = tmp_path / "runs", tmp_path / "results"
    for name in sweep.EXPERIMENTS:
        assert sweep.main([name, "--dry-run", "--runs-dir", str(runs_dir), "--results", str(results)], _never) == 0
    assert sweep.main(["sweep-t", "--dry-run", "--runs-dir", str(runs_dir), "--ckpt", "x/ckpts/last.ckpt"],
                      _never) == 0
    assert lc.main(["--dry-run", "--results", str(results)]) == 0
    out = capsys.readouterr().out
    fits = [line for line in out.splitlines() if "-m ctsr.cli fit" in line]
    assert len(fits) == 14 + 2 + 2 + 6  # stage-2 paths: 3 paths × 2 objectives
    assert sum("--config experiments/stage1.yaml" in f and "tiny_stage1" not in f for f in fits) == 18
    assert "--config experiments/ablations/lambda_rn_0.6.yaml" in out
    assert "--config experiments/ablations/stage2_path_noise.yaml" in out
    assert sum("stage2_objective_eq8.yaml" in f for f in fits) == 3
    assert sum("stage2_objective_endpoint.yaml" in f for f in fits) == 3
    assert "-m ctsr.cli test --config experiments/eval.yaml" in out
    assert "realness=osediff" in out and "resshift:weights/resshift_realsrx4_s4_v3.pth" in out
    assert not runs_dir.exists() and not results.exists()


def test_state_skip_and_resume(tmp_path):
    run = sweep.plan("ablation-distill", "tiny", tmp_path)[0]
    assert run.state == "new" and "--ckpt_path" not in run.argv
    (run.folder / "checkpoints").mkdir(parents=True)
    (run.folder / "checkpoints" / "last.ckpt").write_bytes(b"")
    run = sweep.plan("ablation-distill", "tiny", tmp_path)[0]
    assert run.state == "resume" and run.argv[-2:] == ["--ckpt_path", "last"]
    (run.folder / "metrics.csv").write_text("t,psnr\n0,20\n")
    (run.folder / sweep.DONE).write_text("{}")
    run = sweep.plan("ablation-distill", "tiny", tmp_path)[0]
    assert run.state == "done"
    assert sweep.execute([run], _never) == {}


def test_collected_table_has_one_row_per_variant(tmp_path):
    from ctsr.callbacks.t_sweep import write_tables

    root = sweep.save_dir("ablation-lambda", "paper", tmp_path / "runs")
    runs = sweep.plan("ablation-lambda", "paper", tmp_path / "runs")
    for i, run in enumerate(runs):
        write_tables(run.folder, {0.0: {"psnr": 20.0 + i, "ssim": 0.5, "lpips": 0.3}}, "Y, crop 0", "val")
    md, rows = sweep.collect("ablation-lambda", "paper", tmp_path / "runs", tmp_path / "results")
    assert md == tmp_path / "results" / "ablation-lambda.md"
    assert len(rows) == 16
    assert [(r["factor"], float(r["value"])) for r in rows] == [(f, v) for f, vs in TABLE6.items() for v in vs]
    defaults = [r for r in rows if r["run"] == "defaults"]
    assert len(defaults) == 3 and len({r["psnr"] for r in defaults}) == 1
    with open(tmp_path / "results" / "ablation-lambda.csv") as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == ["factor", "value", "psnr", "lpips", "run"]  # Table 6's columns by default
    assert float(table[0]["psnr"]) == 20.0 and float(table[0]["lpips"]) == 0.3
    assert "PSNR↑" in md.read_text() and "Protocol: Y, crop 0" in md.read_text()
    assert root.is_dir()


def test_tiny_variant_runs_end_to_end_then_is_skipped(workdir):
    """A real tiny `ctsr fit` (in process, to spare the start-up), its done marker, its table row; a re-run skips."""
    run = sweep.plan("ablation-distill", "tiny", "runs")[0]
    assert run.name == "without-distill"
    times = sweep.execute([run], sweep.in_process_launcher)
    assert set(times) == {"without-distill"}
    folder = workdir / "runs" / "tiny" / "ablation-distill" / "without-distill"
    assert (folder / sweep.DONE).is_file() and (folder / "checkpoints" / "last.ckpt").is_file()
    saved = yaml.safe_load((folder / "config.yaml").read_text())["model"]["init_args"]
    assert saved["lambda_fl"] == 0.0 and saved["lambda_rn"] == 0.0
    assert torch.load(folder / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 4

    again = sweep.plan("ablation-distill", "tiny", "runs")
    assert [r.state for r in again] == ["done", "new"]
    sweep.execute(again[:1], _never)  # the finished run is skipped
    md, rows = sweep.collect("ablation-distill", "tiny", "runs", "results")
    assert md.name == "ablation-distill-tiny.md" and len(rows) == 2  # tiny never overwrites the paper table
    done = rows[0]
    assert math.isfinite(float(done["psnr"])) and math.isfinite(float(done["lpips"]))
    assert rows[1]["psnr"] == ""  # not run yet: an empty cell, "—" in Markdown
    assert "—" in md.read_text()


# -- Table 1: linear combination ----------------------------------------------------------------------------------
def test_blend_ends_and_range():
    x_f, x_r = torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8)
    assert torch.equal(lc.blend(x_f, x_r, 0.0), x_r) and torch.equal(lc.blend(x_f, x_r, 1.0), x_f)
    torch.testing.assert_close(lc.blend(x_f, x_r, 0.4), 0.4 * x_f + 0.6 * x_r)
    with pytest.raises(ValueError, match="alpha"):
        lc.blend(x_f, x_r, 1.5)


def test_linear_combination_table(tmp_path, sample_dir):
    from ctsr.data.datamodule import SRDataModule
    from ctsr.metrics import MetricSuite
    from ctsr.models.teachers import AnchoredTeacher

    torch.manual_seed(0)
    dm = SRDataModule(val_dirs=[str(sample_dir / "val")], val_crop_size=64, val_batch_size=2, num_workers=0)
    dm.setup("validate")
    batches = [dm.on_after_batch_transfer(b, 0) for b in dm.val_dataloader()]
    realness = lc.load_realness("tiny")
    fidelity = AnchoredTeacher("bicubic").upscale
    suite = MetricSuite(["psnr", "ssim", "lpips"], weights="random")
    rows, sweep_rows = lc.evaluate(realness, fidelity, batches, lc.DEFAULT_ALPHAS, suite.clone)
    assert list(rows) == list(lc.DEFAULT_ALPHAS) and sweep_rows == {}

    def alone(model):
        s = suite.clone()
        for b in batches:
            s.update(model(b["lr"]).float().clamp(0, 1), b["hr"])
        return s.compute()

    assert rows[0.0] == pytest.approx(alone(lambda x: realness(x, 0.0)))  # α = 0: the realness model
    assert rows[1.0] == pytest.approx(alone(fidelity))                     # α = 1: the fidelity model
    assert all(math.isfinite(v) for r in rows.values() for v in r.values())

    files = lc.write_results(tmp_path, "linear-combination-tiny", rows, sweep_rows, suite.protocol(), "Table 1")
    md, csv_path, png = files
    with open(csv_path) as f:
        table = list(csv.DictReader(f))
    assert len(table) == 6 and [float(r["alpha"]) for r in table] == list(lc.DEFAULT_ALPHAS)
    assert "| α (× fidelity) |" in md.read_text()
    assert png.stat().st_size > 0
