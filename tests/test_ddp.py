"""DDP on the CPU: two gloo processes train the tiny stage 1 and end with the same LoRA weights."""
import os
import subprocess
import sys
from pathlib import Path

import torch

SCRIPT = Path(__file__).parent / "scripts" / "ddp_fit.py"


def test_ddp_ranks_end_with_identical_lora(tmp_path, sample_dir):
    env = dict(os.environ, PL_DISABLE_FORK="1", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(SCRIPT), str(sample_dir), str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert r0["step"] == r1["step"] == 3
    assert r0["weights"].keys() == r1["weights"].keys()
    for name, w in r0["weights"].items():
        assert torch.equal(w, r1["weights"][name]), name
    # LoRA-B starts at zero: non-zero B means the ranks trained (and agree because gradients were all-reduced)
    assert any(w.abs().sum() > 0 for n, w in r0["weights"].items() if "lora_B" in n)
