"""The package as users install it: a wheel built from a clean checkout holds every module and data file, and the
installed wheel — no editable path — runs ``ctsr --help`` and an upscale.

The wheel is built from a copy of the files git tracks (or would track: untracked files it does not ignore), so
nothing ignored (``build/``, ``*.egg-info``, caches) leaks in, as on a fresh clone. The installed copy lives in a
virtual environment beside the repo whose dependencies come from this environment's site-packages through a path
line in a ``.pth`` file: a path line does not run the ``.pth`` files in that folder, so the editable install's
``__editable__`` finder is not active there and ``import ctsr`` can only find the wheel's copy.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _checkout_files() -> list[str]:
    """Paths (relative to the repo) that a clean checkout of the working tree has."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                         capture_output=True)
    if out.returncode != 0:
        pytest.skip("not a git checkout")
    return [p for p in out.stdout.decode().split("\0") if p and (ROOT / p).is_file()]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> tuple[Path, list[str]]:
    """(the wheel built from a clean copy of the checkout, the package files that copy holds)."""
    files = _checkout_files()
    src = tmp_path_factory.mktemp("checkout")
    for rel in files:
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, src / rel)
    dist = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation", "-q",
                    "--disable-pip-version-check", "-w", str(dist)], cwd=src, check=True, capture_output=True)
    (whl,) = dist.glob("ctsr-*.whl")
    return whl, sorted(p for p in files if p.startswith("ctsr/"))


def test_the_wheel_holds_every_module_and_data_file(wheel):
    whl, package_files = wheel
    names = set(zipfile.ZipFile(whl).namelist())
    missing = [p for p in package_files if p not in names]
    assert not missing, f"files of ctsr/ missing from the wheel: {missing[:10]}"
    modules = [p for p in package_files if p.endswith(".py")]
    assert len(modules) > 60 and "ctsr/models/control.py" in names and "ctsr/lit/stage2.py" in names
    # every folder with modules is a package (find_packages skips a folder without __init__.py)
    folders = {str(Path(p).parent) for p in modules}
    assert all(f"{f}/__init__.py" in names for f in folders), sorted(f for f in folders if f"{f}/__init__.py"
                                                                      not in names)


def test_the_mini_worlds_weights_are_declared_package_data(tmp_path):
    """Whatever ``ctsr/mini/weights/`` holds, at any depth, goes into the wheel (the folder may not be built yet in
    a checkout, so this test writes stand-ins into a copy of the packaging files and the ``mini`` package)."""
    for rel in ("setup.py", "setup.cfg", "README.md", "ctsr/__init__.py", "ctsr/mini/__init__.py"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, tmp_path / rel)
    shipped = ["SHA256SUMS", "ctsr-mini.safetensors", "fidelity_compact_x4.pth", "base/model_index.json",
               "base/unet/config.json", "base/unet/diffusion_pytorch_model.safetensors",
               "base/tokenizer/vocab.json", "base/tokenizer/merges.txt", "base/tokenizer/special_tokens_map.json"]
    for rel in shipped:
        path = tmp_path / "ctsr/mini/weights" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    subprocess.run([sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation", "-q",
                    "--disable-pip-version-check", "-w", "dist"], cwd=tmp_path, check=True, capture_output=True)
    (whl,) = (tmp_path / "dist").glob("ctsr-*.whl")
    names = set(zipfile.ZipFile(whl).namelist())
    assert {f"ctsr/mini/weights/{rel}" for rel in shipped} <= names


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """A fresh virtual environment with the wheel installed (not editable); its dependencies from this one's."""
    whl, _ = wheel
    env = tmp_path_factory.mktemp("venv") / "env"
    venv.EnvBuilder(with_pip=False, symlinks=True).create(env)
    python = env / "bin" / "python"
    site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    # a path line: the dependencies' folder joins sys.path, its own .pth files (the editable finder) do not run
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # --ignore-installed: the editable install seen through that path is neither replaced nor uninstalled
    subprocess.run([python, "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed", "-q",
                    "--disable-pip-version-check", "--no-warn-script-location", str(whl)],
                   check=True, capture_output=True, env=_clean_env(), cwd=env)
    return env


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    return {**env, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def test_the_installed_wheel_runs_ctsr(installed, tiny_model_file, tmp_path):
    """``ctsr --help`` and a tiny ``ctsr upscale`` from the wheel's copy, which is the one imported."""
    env, run = _clean_env(), dict(capture_output=True, text=True, cwd=tmp_path, timeout=600)
    where = subprocess.run([installed / "bin" / "python", "-c", "import sys, ctsr; print(ctsr.__file__); "
                            "print(any('editable' in type(f).__name__.lower() or 'editable' in repr(f).lower() "
                            "for f in sys.meta_path))"], env=env, **run)
    assert where.returncode == 0, where.stderr
    file, editable = where.stdout.split()
    assert Path(file).resolve().is_relative_to(installed.resolve()) and editable == "False", where.stdout

    ctsr = installed / "bin" / "ctsr"
    assert ctsr.read_text().startswith(f"#!{installed / 'bin' / 'python'}")
    help_ = subprocess.run([ctsr, "--help"], env=env, **run)
    assert help_.returncode == 0 and "fit" in help_.stdout and "upscale" in help_.stdout, help_.stderr[-2000:]

    from PIL import Image

    Image.new("RGB", (16, 12), (200, 40, 90)).save(tmp_path / "in.png")
    up = subprocess.run([ctsr, "upscale", "in.png", "out.png", "--ckpt", str(tiny_model_file()), "--t", "0.5",
                         "--device", "cpu"], env=env, **run)
    assert up.returncode == 0, up.stderr[-2000:]
    assert Image.open(tmp_path / "out.png").size == (64, 48)
