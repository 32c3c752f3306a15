"""Shared fixtures: tiny models of the real classes, the sample photos, offline everywhere."""
from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# one thread per xdist worker (the suite runs with -n auto on 2 cores); two when run serially
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else min(2, os.cpu_count() or 1))

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "data"))


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models on a loaded 2-core machine run several times faster on one thread (no OpenMP contention);
    modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture()
def lightning_logs_to_stderr():
    """Lightning's log handlers keep the stderr of the test that imported it (closed later by pytest's capture):
    point them at this test's stderr, so what a user would see is what the test reads. Modules that read a command's
    stderr opt in with ``pytestmark = pytest.mark.usefixtures(..., "lightning_logs_to_stderr")``."""
    import logging

    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "lightning.pytorch.core"):
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                handler.stream = sys.stderr
    yield


@pytest.fixture()
def no_network(monkeypatch):
    """Any connection attempt fails the test (a library trying to download means a wrong cache path)."""

    def refuse(*args, **kwargs):
        raise AssertionError("test tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture()
def empty_caches(tmp_path, monkeypatch):
    """Empty torch hub, pyiqa, Hugging Face and ctsr caches under tmp_path (the user's caches are never touched)."""
    import huggingface_hub.constants
    from pyiqa.utils import download_util

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(download_util, "DEFAULT_CACHE_DIR", str(tmp_path / "torch" / "hub" / "pyiqa"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("CTSR_CACHE", str(tmp_path / "ctsr"))
    return tmp_path


@pytest.fixture()
def workdir(tmp_path, monkeypatch, sample_dir):
    """A project-like folder as the current directory: the shipped experiments/ and the sample photos
    (data/samples); runs and results are written here."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "samples").symlink_to(sample_dir)
    (tmp_path / "experiments").symlink_to(ROOT / "experiments")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory) -> Path:
    from make_samples import write_samples

    return write_samples(tmp_path_factory.mktemp("samples"))


@pytest.fixture()
def tiny_generator():
    from ctsr.models.generator import OneStepGenerator

    return OneStepGenerator(pretrained="tiny", seed=0)


def build_tiny_controllable(stage1_lora: bool = True):
    """A tiny stage-2 ``ControllableSR`` whose control LoRA (and, with ``stage1_lora``, stage-1 LoRA) are non-zero,
    so that t changes the picture; the same weights on every call (seeded)."""
    from ctsr.models.control import ControllableSR
    from ctsr.models.generator import OneStepGenerator

    torch.manual_seed(0)
    gen = OneStepGenerator("tiny")
    with torch.no_grad():
        if stage1_lora:
            for n, p in gen.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.05)  # a stage-1 LoRA that changes the output
    stage1 = {n: p.detach().clone() for n, p in gen.named_parameters() if p.requires_grad}
    model = ControllableSR.from_stage1(gen, stage1)
    with torch.no_grad():
        for n, p in model.generator.unet.named_parameters():
            if "lora_B.control" in n:
                p.normal_(0, 0.05)  # a control that does something (B = 0 at init)
    return model


@pytest.fixture(scope="session")
def tiny_controllable():
    """``build_tiny_controllable`` as a fixture: ``tiny_controllable(stage1_lora=True)`` → a fresh model."""
    return build_tiny_controllable


@pytest.fixture(scope="session")
def tiny_model_file(tmp_path_factory):
    """``tiny_model_file(stage1_lora=True)`` → the exported ``.safetensors`` of that model (written once per kind)."""
    files = {}

    def make(stage1_lora: bool = True):
        if stage1_lora not in files:
            folder = tmp_path_factory.mktemp("model")
            files[stage1_lora] = build_tiny_controllable(stage1_lora).export(folder / "tiny.safetensors")
        return files[stage1_lora]

    return make


def pytest_collection_modifyitems(config, items):
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA device")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)
