"""Shared fixtures: tiny models of the real classes, the sample photos, offline everywhere."""
from __future__ import annotations

import os
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
