"""The `ctsr` command: every shipped YAML parses; the quick start trains, checkpoints and resumes; errors are clear."""
import os
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


# -- the command line itself: help, unknown commands, no library noise ------------------------------------------------
def test_help_lists_every_command_grouped(capsys):
    from ctsr.cli import COMMANDS, GROUPS, LIGHTNING_COMMANDS, TOOLS

    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert set(COMMANDS) == set(TOOLS) | set(LIGHTNING_COMMANDS) and len(COMMANDS) == 12
    assert list(GROUPS) == ["train", "evaluate", "use", "publish"]
    lines = out.splitlines()
    for group, names in GROUPS.items():
        start = lines.index(f"{group}:")
        block = [line.split()[0] for line in lines[start + 1:start + 1 + len(names)]]
        assert block == list(names), (group, block)  # each command once, one line, under its group
    assert GROUPS["train"] == ("fit", "validate", "test", "predict")
    assert set(GROUPS["evaluate"]) == {"score", "select-t", "bench"}
    assert set(GROUPS["use"]) == {"upscale", "demo", "export", "convert-ncnn"} and GROUPS["publish"] == ("push",)
    assert not any(word in out for word in ("STYLE", "habit", "issue"))


@pytest.mark.parametrize("typo, nearest", [("upsacle", "upscale"), ("selct-t", "select-t"), ("fti", "fit")])
def test_an_unknown_command_names_the_nearest_one(typo, nearest, capsys):
    assert main([typo, "in.png", "out.png"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"unknown command '{typo}'" in err[0] and f"did you mean '{nearest}'?" in err[0]
    assert main(["frobnicate"]) == 2
    assert "did you mean" not in capsys.readouterr().err


def test_help_does_not_import_torch():
    """`ctsr --help` and `ctsr <tool> --help` answer without importing torch or Lightning (what makes them fast)."""
    probe = ("import sys\nfrom ctsr.cli import main\nfor argv in {argvs!r}:\n    try:\n        main(argv)\n"
             "    except SystemExit as e:\n        assert e.code == 0, (argv, e.code)\n"
             "print(sorted(m for m in ('torch', 'lightning', 'diffusers', 'transformers', 'peft', 'pyiqa') "
             "if m in sys.modules))")
    argvs = [["--help"], *([name, "--help"] for name in ("upscale", "export", "bench", "demo", "push", "score",
                                                         "select-t", "convert-ncnn"))]
    proc = subprocess.run([sys.executable, "-c", probe.format(argvs=argvs)], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"
    assert "usage: ctsr score" in proc.stdout and "train:" in proc.stdout


def test_python_m_ctsr_cli_runs_the_command():
    proc = subprocess.run([sys.executable, "-m", "ctsr.cli", "upsacle"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "did you mean 'upscale'?" in proc.stderr and "Traceback" not in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "ctsr.cli"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "no command given" in proc.stderr and "upscale" in proc.stderr


def test_the_tools_defaults_are_the_library_functions_defaults():
    """The parsers (ctsr/cli) and the library functions they call declare the same defaults."""
    import inspect

    from ctsr.cli import bench, demo, export, push, score, select_t, upscale
    from ctsr.evaluation.score import score_to_table
    from ctsr.evaluation.select_t import select_and_record
    from ctsr.inference.bench import run_bench
    from ctsr.inference.demo import serve
    from ctsr.inference.upscale import upscale_paths
    from ctsr.models.export import export_checkpoint
    from ctsr.models.hub import publish

    for cli, function, positional in ((upscale, upscale_paths, ["i", "o"]), (bench, run_bench, []),
                                      (demo, serve, []), (export, export_checkpoint, ["c", "o.safetensors"]),
                                      (push, publish, ["f", "o/n"]), (score, score_to_table, ["sr", "--out", "o"]),
                                      (select_t, select_and_record, ["tab", "--model", "m"])):
        parsed = vars(cli.build_parser().parse_args(positional))
        params = inspect.signature(function).parameters
        assert set(parsed) == set(params), (cli.__name__, set(parsed) ^ set(params))
        for name, p in params.items():
            if p.default is not inspect.Parameter.empty:
                default = list(p.default) if isinstance(p.default, tuple) else p.default
                assert parsed[name] == default, (cli.__name__, name)


def test_shared_options_are_declared_once():
    """--ckpt, --device, --precision, --tile, --prompting, … are added by ctsr/cli/options.py only."""
    import re

    shared = ("--ckpt", "--device", "--precision", "--batch-size", "--tile", "--tile-overlap", "--vae-tile",
              "--vae-overlap", "--shared-norms", "--color", "--compile", "--control-steps", "--pretrained",
              "--osediff-lora", "--prompting", "--ram-weights", "--dape-weights", "--stem")
    declared: dict[str, list[str]] = {}
    for path in sorted((ROOT / "ctsr" / "cli").glob("*.py")):
        for flag in re.findall(r"add_argument\(\s*\"(--[a-z-]+)\"", path.read_text()):
            declared.setdefault(flag, []).append(path.name)
    for flag in shared:
        assert declared.get(flag) in (["options.py"], None) or flag == "--compile", (flag, declared.get(flag))
        assert flag in declared, flag
    assert declared["--compile"] == ["bench.py", "options.py"]  # bench's --compile is another option (compiled rows)


NOISE = ("Skipping publisher trust check", "in eval mode at the start of training", "'pretrained' is deprecated",
         "Arguments other than a weight enum", "LeafSpec", "💡 Tip", "Loading weights",
         "smaller than the logging interval")


def test_a_tiny_fit_shows_steps_of_max_steps_and_no_library_noise(workdir):
    """As a user runs it: the bar counts steps out of max_steps across epochs (2 batches an epoch, 3 steps), and
    stderr holds none of the lines a user cannot act on."""
    (workdir / "bar.yaml").write_text("trainer:\n  max_steps: 3\n  limit_train_batches: 2\n  val_check_interval: 2\n"
                                      "  check_val_every_n_epoch: null\n  enable_progress_bar: true\n"
                                      "  log_every_n_steps: 3\n")  # > 2 batches an epoch: Lightning would warn
    proc = subprocess.run([sys.executable, "-m", "ctsr.cli", "fit", "--config",
                           str(ROOT / "experiments" / "tiny_stage1.yaml"), "--config", "bar.yaml"],
                          capture_output=True, text=True, timeout=600, cwd=workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for line in NOISE:
        assert line not in proc.stderr and line not in proc.stdout, line
    bar = proc.stdout.replace("\r", "\n")
    assert "Epoch 1: 100%" in bar and " 3/3 [" in bar and "step/s" in bar, bar[-1500:]
    assert "/-" not in bar and " 2/2 [" not in bar  # neither `Epoch 1/-2` nor the epoch's batches


def test_the_step_bar_counts_steps_out_of_max_steps():
    """StepProgressBar on a stand-in trainer: total max_steps, n the global step, across an epoch boundary."""
    from types import SimpleNamespace

    from ctsr.callbacks.progress import StepProgressBar

    bar = StepProgressBar()
    trainer = SimpleNamespace(max_steps=5000, global_step=1200, current_epoch=14, max_epochs=-1)
    bar._trainer = trainer
    bar.train_progress_bar = bar.init_train_tqdm()
    bar.train_progress_bar.disable = False
    bar.on_train_epoch_start(trainer)
    shown = str(bar.train_progress_bar)
    assert "Epoch 14" in shown and "1200/5000" in shown and "/-2" not in shown
    trainer.global_step = 1201
    bar.get_metrics = lambda *a: {}
    bar.on_train_batch_end(trainer, None, None, None, 0)
    assert bar.train_progress_bar.n == 1201 and bar.train_progress_bar.total == 5000
    assert bar.train_progress_bar.initial == 1200  # the rate counts the steps of this process, not the resumed ones
    started = bar.train_progress_bar.start_t
    trainer.current_epoch, trainer.global_step = 15, 1204
    bar.on_train_epoch_start(trainer)  # a new epoch keeps the bar (and its clock): steps/s stays a true rate
    assert bar.train_progress_bar.start_t == started and bar.train_progress_bar.initial == 1200
    bar.on_train_batch_end(trainer, None, None, None, 0)
    assert "Epoch 15" in str(bar.train_progress_bar) and bar.train_progress_bar.n == 1204
    bar.train_progress_bar.close()


def test_ctsr_upscale_prints_no_library_noise(tiny_model_file, tmp_path):
    from PIL import Image

    Image.new("RGB", (24, 20), (120, 60, 30)).save(tmp_path / "in.png")
    proc = subprocess.run([sys.executable, "-m", "ctsr.cli", "upscale", str(tmp_path / "in.png"),
                           str(tmp_path / "out.png"), "--ckpt", str(tiny_model_file()), "--device", "cpu"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "out.png").is_file()
    for line in NOISE:
        assert line not in proc.stderr, line


def test_ctsrs_own_warnings_are_one_line_and_the_librarys_keep_their_source():
    """A command's warnings from ctsr (a skipped metric column, a skipped step) read like its errors: one line; a
    library's warning keeps Python's format (its path says whose it is)."""
    probe = (
        "import warnings, sys\n"
        "from ctsr.quiet import quiet_libraries\n"
        "quiet_libraries()\n"
        "from ctsr.callbacks import t_sweep\n"
        "warnings.warn_explicit('the LPIPS column is skipped:\\n  weights not cached', UserWarning,\n"
        "                       t_sweep.__file__, 291)\n"
        "import json\n"
        "warnings.warn_explicit('a library speaks', UserWarning, json.__file__, 7)\n"
    )
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert lines[0] == "ctsr: warning: the LPIPS column is skipped: weights not cached"
    assert "t_sweep.py" not in proc.stderr
    assert lines[1].endswith("UserWarning: a library speaks") and "json" in lines[1]


def test_only_the_bare_lightning_help_is_served_from_the_cache():
    from ctsr.cli import LIGHTNING_COMMANDS, help_cache

    assert set(help_cache.COMMANDS) == set(LIGHTNING_COMMANDS)
    assert help_cache.cached_command(["fit", "--help"]) == "fit"
    assert help_cache.cached_command(["predict", "-h"]) == "predict"
    for args in (["fit"], ["upscale", "--help"], ["-c", "a.yaml", "fit", "--help"], ["fit", "--config", "a.yaml",
                 "--help"], ["fit", "--help", "--print_config"]):
        assert help_cache.cached_command(args) is None, args


def test_the_help_cache_key_follows_width_versions_and_sources(monkeypatch, tmp_path):
    from ctsr.cli import help_cache

    monkeypatch.setenv("COLUMNS", "100")
    key = help_cache.help_key("fit")
    assert help_cache.help_key("fit") == key and help_cache.help_key("test") != key
    monkeypatch.setenv("COLUMNS", "140")  # argparse wraps to another width: another text
    assert help_cache.help_key("fit") != key
    monkeypatch.setenv("COLUMNS", "100")
    monkeypatch.setattr(help_cache, "_versions", lambda: ["lightning=0"])  # an upgrade renders again
    assert help_cache.help_key("fit") != key
    monkeypatch.undo()
    monkeypatch.setenv("COLUMNS", "100")
    package = tmp_path / "ctsr"  # an edited source file (an editable install): another key
    (package / "cli").mkdir(parents=True)
    (package / "a.py").write_text("x = 1\n")
    monkeypatch.setattr(help_cache, "__file__", str(package / "cli" / "help_cache.py"))
    before = help_cache.help_key("fit")
    (package / "a.py").write_text("x = 22\n")
    assert help_cache.help_key("fit") != before


def test_fit_help_is_rendered_once_then_printed_without_torch(tmp_path):
    """The first `ctsr fit --help` is Lightning's own text; the second is the same text, and imports neither torch
    nor Lightning (what makes it answer in a fraction of a second, benchmarks/bench_help.py)."""
    env = {**os.environ, "CTSR_CACHE": str(tmp_path), "COLUMNS": "120"}
    first = subprocess.run([sys.executable, "-m", "ctsr.cli", "fit", "--help"], capture_output=True, text=True,
                           timeout=300, env=env)
    assert first.returncode == 0, first.stderr[-2000:]
    assert first.stdout.startswith("usage: ctsr") and "--trainer.max_steps" in first.stdout
    assert "LightningCLI's args" not in first.stderr
    copies = list((tmp_path / "help").glob("fit-*.txt"))
    assert len(copies) == 1 and copies[0].read_text() == first.stdout
    probe = ("import sys\nfrom ctsr.cli import main\ntry:\n    main(['fit', '--help'])\nexcept SystemExit as e:\n"
             "    assert e.code == 0\nprint(sorted(m for m in ('torch', 'lightning') if m in sys.modules), "
             "file=sys.stderr)")
    second = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, env=env)
    assert second.returncode == 0, second.stderr[-2000:]
    assert second.stdout == first.stdout
    assert second.stderr.strip().splitlines()[-1] == "[]"
    copies[0].write_text("garbage")  # not a help text: rendered again, and the copy repaired
    third = subprocess.run([sys.executable, "-m", "ctsr.cli", "fit", "--help"], capture_output=True, text=True,
                           timeout=300, env=env)
    assert third.stdout == first.stdout and copies[0].read_text() == first.stdout
