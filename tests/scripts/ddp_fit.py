"""Run by tests/test_ddp.py: a few steps of the tiny stage 1 under DDP (gloo, CPU, 2 processes).

    python tests/scripts/ddp_fit.py SAMPLES_DIR OUT_DIR
Each rank writes its trainable weights to OUT_DIR/rank<k>.pt.
"""
import sys
from pathlib import Path

import lightning as L
import torch

from ctsr.data.datamodule import BicubicDegradation, SRDataModule
from ctsr.lit.stage1 import DualTeacherDistillation
from ctsr.models.generator import OneStepGenerator
from ctsr.models.teachers import AnchoredTeacher

if __name__ == "__main__":
    samples, out = Path(sys.argv[1]), Path(sys.argv[2])
    torch.set_num_threads(1)
    L.seed_everything(0)
    model = DualTeacherDistillation(OneStepGenerator("tiny"), AnchoredTeacher("bicubic"), lpips_weights="random", lr=1e-3)
    data = SRDataModule(train_dirs=[str(samples / "train")], crop_size=32, batch_size=1, num_workers=0,
                        degradation=BicubicDegradation())
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_steps=3, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, data)
    weights = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    torch.save({"weights": weights, "step": trainer.global_step}, out / f"rank{trainer.global_rank}.pt")
