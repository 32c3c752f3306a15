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


def pytest_collection_modifyitems(config, items):
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA device")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)
