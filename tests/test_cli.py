"""The `ctsr` command: every shipped YAML parses; the quick start trains, checkpoints and resumes; errors are clear."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from ctsr.cli import main

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "experiments").glob("*.yaml")) + sorted(
    p for p in (ROOT / "experiments" / "mini").glob("*.yaml") if not p.stem.startswith("ablation_"))
ABLATIONS = sorted((ROOT / "experiments" / "ablations").glob("*.yaml"))


def _subcommand(path: Path) -> str:
    return "test" if path.stem.startswith("eval") else "fit"


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_every_experiment_config_parses(config, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([_subcommand(config), "--config", str(config), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["class_path"].startswith("ctsr.lit.")
    assert printed["data"]["class_path"] == "ctsr.data.datamodule.SRDataModule"


def test_the_mini_overlay_stacks_on_stage1_and_each_lambda_ablation(capsys):
    overlay = ROOT / "experiments" / "mini" / "ablation_stage1.yaml"
    for ablation in [None, *sorted((ROOT / "experiments" / "ablations").glob("lambda_rn_*.yaml"))]:
        argv = ["fit", "--config", str(ROOT / "experiments" / "stage1.yaml"), "--config", str(overlay)]
        with pytest.raises(SystemExit) as exit_info:
            main(argv + (["--config", str(ablation)] if ablation else []) + ["--print_config"])
        assert exit_info.value.code in (0, None)
        printed = yaml.safe_load(capsys.readouterr().out)["model"]["init_args"]
        assert printed["generator"]["init_args"]["pretrained"] == "mini" and printed["init_from"] == "mini"
        assert printed["lambda_lp"] == 0.0
        assert printed["lambda_rn"] == (float(ablation.stem.rsplit("_", 1)[1]) if ablation else 1.0)


@pytest.mark.parametrize("ablation", ABLATIONS, ids=lambda p: p.name)
def test_every_ablation_stacks_on_its_base(ablation, capsys):
    first = ablation.read_text().splitlines()[0]
    base = ROOT / "experiments" / (first.split("base:", 1)[1].strip() if "base:" in first else "stage1.yaml")
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(base), "--config", str(ablation), "--print_config"])
    assert exit_info.value.code in (0, None)


def test_help_lists_the_subcommands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for sub in ("fit", "validate", "test", "predict"):
        assert sub in out


FAST = """
trainer:
  max_steps: {steps}
  val_check_interval: 2
  log_every_n_steps: 1
  enable_progress_bar: false
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {{save_last: true, every_n_train_steps: 2, save_top_k: -1}}
"""


@pytest.fixture()
def workdir(tmp_path, monkeypatch, sample_dir):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "samples").symlink_to(sample_dir)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_a_tiny_run_trains_checkpoints_and_resumes(workdir):
    cfg = str(ROOT / "experiments" / "tiny_stage1.yaml")
    (workdir / "fast4.yaml").write_text(FAST.format(steps=4))
    (workdir / "fast6.yaml").write_text(FAST.format(steps=6))
    assert main(["fit", "--config", cfg, "--config", "fast4.yaml"]) == 0
    run = workdir / "runs" / "tiny" / "ctsr-stage1"
    assert list(run.glob("events.out.tfevents.*"))
    assert (run / "config.yaml").is_file()
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["model"]["init_args"]["generator"]["init_args"]["pretrained"] == "tiny"
    first = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert first["global_step"] == 4
    assert all("lora_" in k or ".unet.conv_in.base_layer." in k for k in first["state_dict"])  # + conv_in (OSEDiff)
    assert (run / "checkpoints" / "last.ckpt").stat().st_size < 5e6

    # a second fit into the same folder without --ckpt_path is refused (nothing is overwritten)
    assert main(["fit", "--config", cfg, "--config", "fast6.yaml"]) == 2

    assert main(["fit", "--config", cfg, "--config", "fast6.yaml", "--ckpt_path", "last"]) == 0
    second = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert second["global_step"] == 6
    opt1, opt2 = first["optimizer_states"][0]["state"], second["optimizer_states"][0]["state"]
    assert float(opt2[0]["step"]) == float(opt1[0]["step"]) + 2  # the AdamW state continued, not restarted
    k = next(iter(first["state_dict"]))
    assert not torch.equal(first["state_dict"][k], second["state_dict"][k])


def test_missing_weights_are_one_clear_line(workdir):
    """As a user sees it: a real `ctsr` process, exit status 2, one line naming the file, no traceback."""
    proc = subprocess.run(
        [sys.executable, "-m", "ctsr.cli", "fit", "--config", str(ROOT / "experiments" / "tiny_stage1.yaml"),
         "--model.init_args.generator.init_args.osediff_lora", "weights/osediff.pkl"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "ctsr: error:" in proc.stderr and "weights/osediff.pkl" in proc.stderr
    assert "Traceback" not in proc.stderr
