"""The mini world's photos: real photographs that ship inside registry packages, split train / val / test.

Every photo is read from the installed package, or from a package file fetched from its registry and not installed
(scikit-learn's wheel from PyPI; Debian's ``lomiri-wallpapers-16.04`` from deb.debian.org, by URL with its SHA-256:
large photos, scaled so that their short side is 512 px, which also removes their JPEG noise), written as PNG under
``data/mini/<split>/HR/``; the held-out test photos also get a fixed LR
(``data/mini/test/LR/``, the suite's Real-ESRGAN degradation with a seed per image, 8-bit PNG), so that every row
of the report — bicubic, both teachers, CTSR at each t — sees the same LR bytes. The splits are checked
pixel-hash disjoint (SHA-256 of size + 8-bit RGB, as ``data/build_meta.py``), and no scene is in two splits (the
two views of the Middlebury motorcycle are both held out).

    python -m ctsr.mini.corpus [--out data/mini]
"""
from __future__ import annotations

import argparse
import hashlib
import io
import lzma
import subprocess
import tarfile
import urllib.request
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
LOMIRI_DEB = ("http://deb.debian.org/debian/pool/main/l/lomiri-wallpapers/lomiri-wallpapers-16.04_20.04.0-2_all.deb",
              "a99ff6a3bfe451e4cc0682ecb3cc82e71740626d59e4845ae34a0a0e45421eab")
LARGE_SHORT_SIDE = 512
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
    # Debian's lomiri-wallpapers-16.04 (usr/share/backgrounds/; licences in its debian/copyright): the photos under
    # CC BY 4.0 or CC0 only (its CC BY-SA ones are left out, so nothing trained on them carries share-alike terms)
    *(Photo(name, "train", "lomiri-wallpapers-16.04", f"./usr/share/backgrounds/{file}", licence, author)
      for name, file, licence, author in (
          ("aitzgorri", "aitzgorri_by_Aitzol_Berasategi.jpg", "CC BY 4.0", "Aitzol Berasategi"),
          ("friends", "friends_by_Aitzol_Berasategi.jpg", "CC BY 4.0", "Aitzol Berasategi"),
          ("life", "life_by_Aitzol_Berasategi.jpg", "CC BY 4.0", "Aitzol Berasategi"),
          ("picosdeeuropa", "picosdeeuropa_by_Aitzol_Berasategi.jpg", "CC BY 4.0", "Aitzol Berasategi"),
          ("sunset", "sunset_by_Aitzol_Berasategi.jpg", "CC BY 4.0", "Aitzol Berasategi"),
          ("clock", "Picture_0B_by_freespace.jpg", "CC BY 4.0", "freespace"),
          ("bird", "Picture_1A_by_freespace.jpg", "CC BY 4.0", "freespace"),
          ("wine", "Wine_by_Jakkub_Mede.jpg", "CC BY 4.0", "Jakkub Mede"),
          ("seeding", "seeding_by_Clements_Engelhardt.jpg", "CC0 1.0", "Clements Engelhardt"))),
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


def _deb_member(url: str, sha: str, member: str, cache: Path) -> bytes:
    """One file of a Debian package (fetched once by URL, SHA-256 checked): ar archive → data.tar.xz → member."""
    deb = cache / url.rsplit("/", 1)[1]
    if not deb.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        try:
            with urllib.request.urlopen(url, timeout=300) as response:
                payload = response.read()
        except OSError as err:
            raise DataError(f"could not fetch {url} ({err})") from None
        if hashlib.sha256(payload).hexdigest() != sha:
            raise DataError(f"{url} does not have the expected SHA-256 {sha}; not used")
        tmp = deb.with_name(deb.name + ".tmp")
        tmp.write_bytes(payload)
        tmp.replace(deb)
    data = deb.read_bytes()
    pos = 8  # "!<arch>\n", then 60-byte headers: name (16), …, size (10) at 48
    while pos < len(data):
        name, size = data[pos : pos + 16].decode().strip(), int(data[pos + 48 : pos + 58])
        body = data[pos + 60 : pos + 60 + size]
        if name.startswith("data.tar"):
            raw = lzma.decompress(body) if name.endswith(".xz") else body
            with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
                try:
                    f = tar.extractfile(member)
                except KeyError:
                    f = None
                if f is None:
                    raise DataError(f"'{member}' is not in {deb.name}")
                return f.read()
        pos += 60 + size + size % 2
    raise DataError(f"{deb.name} has no data.tar member")


def read_photo(photo: Photo, cache: Path) -> np.ndarray:
    """The photo as RGB uint8 (H, W, 3) (grayscale textures repeated to three channels)."""
    if photo.package == "lomiri-wallpapers-16.04":
        img = Image.open(io.BytesIO(_deb_member(*LOMIRI_DEB, photo.member, cache))).convert("RGB")
        scale = LARGE_SHORT_SIDE / min(img.size)
        img = img.resize((round(img.width * scale), round(img.height * scale)), Image.LANCZOS)
        return np.asarray(img, dtype=np.uint8)
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

    x = torch.from_numpy(np.array(hr)).permute(2, 0, 1)[None].float() / 255
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
