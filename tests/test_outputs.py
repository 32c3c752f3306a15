"""Issue 24, parts 2–3: a full disk or a read-only output location is one line naming the path, exit status 2,
nothing partial, the earlier files intact, read-only outputs found before the work starts; temporary files of
atomic writes are removed on failure and swept by their own name pattern on the next run (docs/reliability.md,
rows 50–60).

Tests run as root here, where permission bits do not stop writes; a full disk or a read-only mount cannot be made
without privileges. Both are simulated at the one low-level call every atomic write and the writability check go
through (``ctsr.checkpoints._open_temp``): a file whose writes fail with ENOSPC after some bytes, or an open that
fails with EROFS under a folder. One test uses the kernel's own limit instead (RLIMIT_FSIZE: EFBIG), and one the
permission bits, when not root."""
from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ctsr import checkpoints
from ctsr.checkpoints import TMP_MARK, atomic_save, atomic_write, check_writable, load_checkpoint, sweep_temp_files
from ctsr.cli import main
from ctsr.errors import OutputError

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread", "lightning_logs_to_stderr")


# -- simulated file systems --------------------------------------------------------------------------------------------
class _FullFile:
    """A real temporary file on a disk with ``room`` bytes left: writes past it fail with ENOSPC."""

    def __init__(self, f, room: int) -> None:
        self.f, self.room = f, room

    def write(self, data) -> int:
        n = len(memoryview(data).cast("B"))
        if n > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= n
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


@pytest.fixture()
def full_disk(monkeypatch):
    """``full_disk(room=0, only=None)``: temporary files (of targets whose name contains ``only``) are on a disk
    with ``room`` bytes left."""

    def install(room: int = 0, only: str | None = None):
        real = checkpoints._open_temp

        def open_temp(path):
            f = real(path)
            return f if only is not None and only not in Path(path).name else _FullFile(f, room)

        monkeypatch.setattr(checkpoints, "_open_temp", open_temp)

    return install


@pytest.fixture()
def read_only(monkeypatch):
    """``read_only(folder)``: no file can be created under ``folder`` (EROFS, as a read-only mount answers)."""

    def add(folder: Path) -> Path:
        real, target = checkpoints._open_temp, Path(folder).resolve()

        def open_temp(path):
            if Path(path).resolve().is_relative_to(target):
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
            return real(path)

        monkeypatch.setattr(checkpoints, "_open_temp", open_temp)
        return folder

    return add


def _one_line_error(capsys, *texts: str) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line.startswith("ctsr")]
    assert "Traceback" not in err, err[-3000:]
    assert lines and lines[-1].startswith(("ctsr: error:", "ctsr upscale: error:")), err[-2000:]
    for text in texts:
        assert text in lines[-1], lines[-1]
    return lines[-1]


def _temps(folder: Path) -> list[Path]:
    return [p for p in Path(folder).rglob(".*") if TMP_MARK in p.name or p.name.endswith(".part")]


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


# -- the writer itself -------------------------------------------------------------------------------------------------
def test_atomic_writes_on_a_full_disk_leave_the_old_file_and_no_temp(tmp_path, full_disk):
    target = tmp_path / "last.ckpt"
    atomic_save({"global_step": 1, "w": torch.ones(10)}, target)
    full_disk(room=100)
    with pytest.raises(OutputError, match=r"checkpoint: cannot write '.*last.ckpt': no space left on the device "
                                          r"\(ENOSPC\); nothing partial was left"):
        atomic_save({"global_step": 2, "w": torch.ones(100_000)}, target)  # torch.save wraps it in RuntimeError
    assert load_checkpoint(target)["global_step"] == 1
    assert _temps(tmp_path) == []
    with pytest.raises(OutputError, match="ENOSPC"):
        full_disk(room=60)
        checkpoints.atomic_write_files([(tmp_path / "a.csv", b"x" * 50), (tmp_path / "a.md", b"y" * 80)], "table")
    assert not (tmp_path / "a.csv").exists() and _temps(tmp_path) == []  # the first was not renamed either


def test_check_writable_tries_a_file(tmp_path, read_only):
    check_writable(tmp_path / "not" / "yet", "OUT")           # a folder to create: its existing parent is tried
    assert not (tmp_path / "not").exists() and _temps(tmp_path) == []
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputError, match="'.*f' is not a folder"):
        check_writable(tmp_path / "f" / "sub", "OUT")
    read_only(tmp_path / "ro")
    (tmp_path / "ro").mkdir()
    with pytest.raises(OutputError, match=r"OUT: cannot write '.*ro': read-only file system \(EROFS\)"):
        check_writable(tmp_path / "ro", "OUT")


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores permission bits (the EROFS simulation covers it)")
def test_check_writable_on_a_folder_without_write_permission(tmp_path):
    (tmp_path / "ro").mkdir()
    os.chmod(tmp_path / "ro", 0o555)
    try:
        with pytest.raises(OutputError, match="permission denied"):
            check_writable(tmp_path / "ro", "OUT")
    finally:
        os.chmod(tmp_path / "ro", 0o755)


def test_a_killed_writer_leaves_a_temp_that_the_next_run_sweeps(tmp_path):
    """A real kill -9 between writing and renaming: the target is untouched, a `.<name>.tmp-<pid>` is left; the
    sweep removes it (dead PID) but never the temporary file of a live process or one this process is writing."""
    target = tmp_path / "m.safetensors"
    target.write_bytes(b"old")
    code = ("import os, signal; from ctsr.checkpoints import atomic_write\n"
            f"with atomic_write({str(target)!r}) as f:\n    f.write(b'new' * 1000); f.flush()\n"
            "    os.kill(os.getpid(), signal.SIGKILL)\n")
    p = subprocess.Popen([sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert p.wait(timeout=300) == -signal.SIGKILL
    left = _temps(tmp_path)
    assert [t.name for t in left] == [f".m.safetensors{TMP_MARK}{p.pid}"] and target.read_bytes() == b"old"
    live = tmp_path / f".other.png{TMP_MARK}1"          # PID 1 is alive
    live.write_bytes(b"x")
    with atomic_write(tmp_path / "x.csv") as f:          # being written by this process: not swept
        assert sweep_temp_files(tmp_path, ["x.csv"]) == []
        f.write(b"1")
    assert sweep_temp_files(tmp_path, ["other.png"]) == []
    assert sweep_temp_files(tmp_path) == left and live.exists()
    # a run folder: what a killed save left anywhere in it goes when the next run takes the folder's lock
    from ctsr.runs import RunLock

    stale = tmp_path / "run" / "checkpoints" / f".last.ckpt{TMP_MARK}{p.pid}"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"half")
    RunLock.acquire(tmp_path / "run").release()
    assert not stale.exists()


# -- fit ---------------------------------------------------------------------------------------------------------------
FIT_YAML = """
trainer:
  max_steps: 4
  val_check_interval: 4
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {{save_last: false, every_n_train_steps: 2, save_top_k: -1{extra}}}
    - class_path: ctsr.callbacks.t_sweep.TSweepEvaluation
      init_args: {{metrics: [psnr], metric_weights: random, num_images: 1}}
"""


def _fit(workdir: Path, name: str = "r", extra: str = "", runs: str = "runs") -> list[str]:
    (workdir / f"{name}.yaml").write_text(FIT_YAML.format(extra=extra))
    return ["fit", "--config", str(ROOT / "experiments" / "tiny_stage1.yaml"), "--config", f"{name}.yaml",
            "--trainer.logger.init_args.save_dir", runs, "--trainer.logger.init_args.name", name]


def test_fit_on_a_full_disk_stops_in_one_line_and_keeps_the_earlier_checkpoint(workdir, full_disk, capsys):
    full_disk(room=0, only="step=4")  # the step-2 checkpoint fits, the step-4 one does not
    assert main(_fit(workdir)) == 2
    _one_line_error(capsys, "checkpoint: cannot write", "step=4.ckpt", "no space left on the device")
    ckpts = workdir / "runs" / "r" / "checkpoints"
    assert [p.name for p in ckpts.iterdir()] == ["epoch=0-step=2.ckpt"]        # nothing partial, no temp file
    assert load_checkpoint(ckpts / "epoch=0-step=2.ckpt")["global_step"] == 2  # the earlier one intact
    assert not (workdir / "runs" / "r" / "run.lock").exists()


def test_fit_into_a_read_only_folder_stops_before_training(workdir, read_only, capsys, monkeypatch):
    import lightning as L

    def no_training(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(L.Trainer, "fit", no_training)
    read_only(workdir / "runs")
    (workdir / "runs").mkdir()
    assert main(_fit(workdir)) == 2
    _one_line_error(capsys, "run folder: cannot write", "read-only file system")
    assert list((workdir / "runs").iterdir()) == []
    # the checkpoint folder elsewhere (ModelCheckpoint dirpath) is checked too
    read_only(workdir / "ckpts")
    (workdir / "ckpts").mkdir()
    assert main(_fit(workdir, "r2", extra=", dirpath: ckpts", runs="runs2")) == 2
    _one_line_error(capsys, "checkpoints: cannot write", "ckpts")


# -- export ------------------------------------------------------------------------------------------------------------
def _stage2_checkpoint(path: Path, model) -> Path:
    """A stage-2 checkpoint as the Lightning module writes it (what `ctsr export` reads)."""
    state = {f"model.generator.unet.{k}": v for k, v in model.control_lora().items()}
    atomic_save({"state_dict": state, "ctsr_stage1_lora": model.stage1_lora, "global_step": 3,
                 "ctsr_generator_config": model.generator.config, "ctsr_control": dict(model.control_config)}, path)
    return path


@pytest.fixture(scope="module")
def stage2_ckpt(tmp_path_factory, tiny_controllable):
    return _stage2_checkpoint(tmp_path_factory.mktemp("s2") / "last.ckpt", tiny_controllable(stage1_lora=False))


def test_export_full_disk_read_only_and_a_killed_exports_temp(stage2_ckpt, tmp_path, full_disk, read_only,
                                                               monkeypatch, capsys):
    out = tmp_path / "out" / "m.safetensors"
    out.parent.mkdir()
    stale = out.parent / f".m.safetensors{TMP_MARK}{_dead_pid()}.safetensors"   # an earlier version's name
    stale.write_bytes(b"half")
    assert main(["export", str(stage2_ckpt), str(out)]) == 0
    assert not stale.exists() and _temps(tmp_path) == []
    before = out.read_bytes()
    full_disk(room=1000, only="m.safetensors")  # the model file does not fit
    assert main(["export", str(stage2_ckpt), str(out), "--force"]) == 2
    _one_line_error(capsys, "model file: cannot write", "m.safetensors", "ENOSPC")
    assert out.read_bytes() == before and _temps(tmp_path) == []
    monkeypatch.undo()

    from ctsr.models import export

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the output folder was checked")

    monkeypatch.setattr(export, "load_model", no_load)
    read_only(tmp_path / "ro")
    (tmp_path / "ro").mkdir()
    assert main(["export", str(stage2_ckpt), str(tmp_path / "ro" / "m.safetensors")]) == 2
    _one_line_error(capsys, "out: cannot write", "read-only file system")


def test_export_past_the_kernels_file_size_limit(stage2_ckpt, tmp_path):
    """No simulation: RLIMIT_FSIZE makes the kernel refuse writes past 200 kB (EFBIG) as a full disk refuses them
    (the tiny model file is 0.7 MB)."""
    import resource

    out = tmp_path / "m.safetensors"
    out.write_bytes(b"the earlier export")

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))

    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, "-m", "ctsr.cli", "export", str(stage2_ckpt), str(out), "--force"],
                       env=env, preexec_fn=limit, capture_output=True, text=True, timeout=600, check=False)
    assert p.returncode == 2, p.stderr[-3000:]
    assert "Traceback" not in p.stderr and p.stderr.strip().splitlines()[-1].startswith("ctsr: error: model file: "
                                                                                        "cannot write")
    assert "file too large" in p.stderr and out.read_bytes() == b"the earlier export" and _temps(tmp_path) == []


# -- score and its tables ----------------------------------------------------------------------------------------------
@pytest.fixture()
def folders(tmp_path):
    from PIL import Image

    for name in ("sr", "hr"):
        (tmp_path / name).mkdir()
        Image.new("RGB", (32, 32), (10, 120, 200) if name == "sr" else (12, 118, 201)).save(tmp_path / name / "a.png")
    return tmp_path


def test_score_full_disk_keeps_the_table_and_read_only_fails_before_scoring(folders, full_disk, read_only,
                                                                           monkeypatch, capsys):
    out = folders / "t"
    argv = ["score", str(folders / "sr"), str(folders / "hr"), "--metrics", "psnr", "--out", str(out)]
    legacy = out / ".metrics.csv.abc123de"           # an earlier version's temporary table (mkstemp)
    out.mkdir()
    legacy.write_text("")
    assert main(argv + ["--name", "A"]) == 0
    assert not legacy.exists()
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert sorted(before) == ["metrics.csv", "metrics.json", "metrics.md"]
    full_disk(room=0, only="metrics.md")  # csv and json fit, md does not
    assert main(argv + ["--name", "B"]) == 2
    _one_line_error(capsys, "metrics table: cannot write", "metrics.md", "ENOSPC")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # all three as they were, no temp file
    monkeypatch.undo()

    from ctsr.evaluation import score

    monkeypatch.setattr(score, "MetricSuite", lambda *a, **k: (_ for _ in ()).throw(AssertionError("scored")))
    read_only(folders / "ro")
    (folders / "ro").mkdir()
    assert main(argv[:-1] + [str(folders / "ro" / "t")]) == 2
    _one_line_error(capsys, "--out: cannot write", "read-only file system")


# -- select-t ----------------------------------------------------------------------------------------------------------
def test_select_t_full_disk_read_only_and_a_killed_rewrite(tiny_model_file, tmp_path, full_disk, read_only,
                                                          monkeypatch, capsys):
    from ctsr.evaluation.tables import Row, Table, write_table

    model = tmp_path / "m.safetensors"
    model.write_bytes(Path(tiny_model_file(stage1_lora=False)).read_bytes())
    rows = [Row("CTSR", t, {"psnr": 24.0 + t, "lpips": 0.3 + 0.05 * t}) for t in (0.0, 0.5, 1.0)]
    write_table(tmp_path / "val", Table(rows, {}, "val", split="val"))
    stale = [tmp_path / f".m.safetensors{TMP_MARK}{_dead_pid()}", tmp_path / ".m.safetensors.x1y2z3ab.tmp"]
    for s in stale:
        s.write_bytes(b"half")
    before = model.read_bytes()
    full_disk(room=2000, only="m.safetensors")
    assert main(["select-t", str(tmp_path / "val"), "--model", str(model)]) == 2
    _one_line_error(capsys, "--model: cannot write", "m.safetensors", "ENOSPC")
    assert model.read_bytes() == before and _temps(tmp_path) == []  # the killed runs' files swept as well
    monkeypatch.undo()
    ro = read_only(tmp_path / "ro")
    ro.mkdir()
    (ro / "m.safetensors").write_bytes(before)
    assert main(["select-t", str(tmp_path / "val"), "--model", str(ro / "m.safetensors")]) == 2
    _one_line_error(capsys, "--model: cannot write", "read-only file system")
    assert "selected t" not in capsys.readouterr().out
    assert main(["select-t", str(tmp_path / "val"), "--model", str(ro / "m.safetensors"), "--dry-run"]) == 0


# -- upscale -----------------------------------------------------------------------------------------------------------
def test_upscale_full_disk_stops_and_read_only_fails_before_loading(tiny_model_file, tmp_path, full_disk, read_only,
                                                                    monkeypatch, capsys):
    from PIL import Image

    src = tmp_path / "in"
    src.mkdir()
    for name in ("a", "b", "c"):
        Image.new("RGB", (16, 16), (40, 90, 200)).save(src / f"{name}.png")
    out = tmp_path / "out"
    out.mkdir()
    stale = [out / f".a.png{TMP_MARK}{_dead_pid()}", out / ".b.png.part"]  # a kill before the rename, new and old
    for s in stale:
        s.write_bytes(b"half")
    model = str(tiny_model_file(stage1_lora=False))
    argv = ["upscale", str(src), str(out), "--ckpt", model, "--tile", "0", "--vae-tile", "0", "--device", "cpu"]
    full_disk(room=0, only="b.png")  # a.png fits, b.png does not
    assert main(argv) == 2
    _one_line_error(capsys, "OUTPUT: cannot write", "b.png", "ENOSPC")
    assert sorted(p.name for p in out.iterdir()) == ["a.png"]  # earlier output kept, nothing partial, stale swept
    monkeypatch.undo()

    from ctsr.models import export

    monkeypatch.setattr(export, "load_model", lambda *a, **k: (_ for _ in ()).throw(AssertionError("loaded")))
    read_only(tmp_path / "ro")
    (tmp_path / "ro").mkdir()
    assert main(argv[:2] + [str(tmp_path / "ro" / "sub")] + argv[3:]) == 2
    _one_line_error(capsys, "OUTPUT: cannot write", "read-only file system")


# -- what a library writes itself (TensorBoard, config.yaml): still one line -------------------------------------------
def test_a_library_writers_disk_error_is_one_line(monkeypatch, capsys):
    import ctsr.cli.lightning

    def fails(argv):
        try:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "runs/r/events.out.tfevents.1")
        except OSError as err:
            raise RuntimeError("writer thread failed") from err

    monkeypatch.setattr(ctsr.cli.lightning, "_lightning_cli", fails)
    assert main(["fit"]) == 2
    _one_line_error(capsys, "'runs/r/events.out.tfevents.1': no space left on the device (ENOSPC)")
