"""Write the bundled sample photos (scikit-image's colour test images) as PNGs for the quick start and tests.

    python data/make_samples.py [OUT_DIR]     # default: data/samples

train/: astronaut, coffee, chelsea, rocket; val/: the two views of stereo_motorcycle.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data

TRAIN = {"astronaut": data.astronaut, "coffee": data.coffee, "chelsea": data.chelsea, "rocket": data.rocket}


def write_samples(out: str | Path = Path(__file__).parent / "samples") -> Path:
    out = Path(out)
    (out / "train").mkdir(parents=True, exist_ok=True)
    (out / "val").mkdir(parents=True, exist_ok=True)
    images = {f"train/{k}": f() for k, f in TRAIN.items()}
    left, right, _ = data.stereo_motorcycle()
    images.update({"val/motorcycle_left": left, "val/motorcycle_right": right})
    for name, arr in images.items():
        path = out / f"{name}.png"
        if not path.exists():
            Image.fromarray(np.asarray(arr, dtype=np.uint8)).convert("RGB").save(path)
    return out


if __name__ == "__main__":
    print(write_samples(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent / "samples"))
