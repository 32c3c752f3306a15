"""Run by tests/test_t_sweep.py: evaluate one tiny controllable model with TSweepEvaluation on N CPU processes.

    python tests/scripts/ddp_eval.py MODEL_FILE VAL_DIR OUT_JSON DEVICES
"""
import json
import sys
from pathlib import Path

import lightning as L
import torch

from ctsr.callbacks.t_sweep import TSweepEvaluation
from ctsr.data.datamodule import BicubicDegradation, SRDataModule
from ctsr.lit.evaluate import TrainedModel

if __name__ == "__main__":
    model_file, val_dir, out, devices = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    torch.set_num_threads(1)
    cb = TSweepEvaluation(t_values=[0.0, 0.5, 1.0], metrics=["psnr", "ssim", "lpips", "fid"], metric_weights="random")
    data = SRDataModule(test_dirs=[val_dir], val_crop_size=64, val_batch_size=1, num_workers=0,
                        degradation=BicubicDegradation())
    trainer = L.Trainer(accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto",
                        logger=False, callbacks=[cb], enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=str(Path(out).parent))
    trainer.test(TrainedModel(model_file), data)
    if trainer.is_global_zero:
        json.dump({str(t): row for t, row in cb.last_rows.items()}, open(out, "w"))
