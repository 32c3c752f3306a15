"""Datasets: HR folders / meta-info lists for training, HR-only or paired LR–HR folders for validation and test.

Training randomness (crop position, flips, rotations) is a function of (seed, epoch, index) alone — the item key is
``(epoch, index)`` from :class:`EpochSampler`, whose order is a function of (seed, epoch) — so a resumed run draws
exactly the crops of the uninterrupted one, whatever process or worker reads them.

Every item is a dict of tensors (and strings) that ``default_collate`` batches:
``hr`` (3,H,W) in [0,1]; ``lr`` (3,H/4,W/4) for paired sets; ``seed`` (int64) a fixed per-image seed for the
validation degradation; ``path``; ``skipped`` the paths (``\\n``-joined) of unreadable files passed over to make
this item, so the data module can count and log them from the main process.
"""
from __future__ import annotations

import hashlib
import random
import re
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset, Sampler

from ctsr.data.images import IMAGE_EXTENSIONS, UnreadableImage, list_images, read_image
from ctsr.errors import DataError

MAX_CONSECUTIVE_SKIPS = 50


def path_seed(path: str | Path) -> int:
    """A stable 63-bit seed from a file name: the same image gets the same degradation in every run."""
    return int.from_bytes(hashlib.sha256(Path(path).name.encode()).digest()[:8], "little") >> 1


def mix_seed(*parts: int | str) -> int:
    """A 63-bit seed from several integers (seed, epoch, index, …), the same in every process and run."""
    text = "/".join(str(p) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


class EpochSampler(Sampler):
    """Training order: a permutation of ``n`` that is a function of (seed, epoch) only; yields ``(epoch, index)``
    keys so the dataset's draws depend on them alone. Lightning calls :meth:`set_epoch` before every epoch.
    :meth:`resume_at` skips the first ``consumed`` items of one epoch: a run resumed mid-epoch continues the
    uninterrupted run's order instead of starting the epoch again."""

    def __init__(self, n: int, seed: int = 0, shuffle: bool = True) -> None:
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self.epoch = 0
        self._resume: tuple[int, int] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def resume_at(self, epoch: int, consumed: int) -> None:
        self._resume = (int(epoch), int(consumed))

    def order(self, epoch: int) -> list[int]:
        if not self.shuffle:
            return list(range(self.n))
        g = torch.Generator().manual_seed(mix_seed("order", self.seed, epoch))
        return torch.randperm(self.n, generator=g).tolist()

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        epoch, start = self.epoch, 0
        if self._resume is not None:
            if self._resume[0] == epoch:
                start = self._resume[1]
            self._resume = None
        for index in self.order(epoch)[start:]:
            yield (epoch, index)


def read_meta_file(meta: str | Path) -> list[Path]:
    """A meta-info list: one image path per line (relative to the list's folder, or absolute); ``#`` comments.
    BasicSR's ``path (h,w,c)`` lines work too: only the first field is read."""
    meta = Path(meta)
    if not meta.is_file():
        raise DataError(f"meta-info list '{meta}' does not exist")
    files = []
    for line in meta.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            p = Path(line.split()[0])
            files.append(p if p.is_absolute() else meta.parent / p)
    return files


def collect_files(folders: list[str], meta_files: list[str], flag: str) -> list[Path]:
    """All images of several folders and meta lists, merged (as the paper merges DIV2K, LSDIR, …)."""
    files: list[Path] = []
    for folder in folders:
        root = Path(folder).expanduser()
        if not root.is_dir():
            raise DataError(f"{flag}: folder '{folder}' does not exist")
        found = list_images(root)
        if not found:
            raise DataError(f"{flag}: folder '{folder}' holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        files += found
    for meta in meta_files:
        listed = read_meta_file(meta)
        if not listed:
            raise DataError(f"{flag}: meta-info list '{meta}' lists no files")
        files += listed
    if not files:
        raise DataError(f"{flag}: no training images given (set train_dirs or train_meta)")
    return files


def fit_to_crop(img: Tensor, size: int) -> Tensor:
    """Reflect-pad (or replicate where reflection is too short) an image smaller than ``size`` on either side."""
    _, h, w = img.shape
    ph, pw = max(0, size - h), max(0, size - w)
    if ph == 0 and pw == 0:
        return img
    pad = (0, pw, 0, ph)
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(img[None], pad, mode=mode)[0]


class HRTrainDataset(Dataset):
    """Random ``crop_size`` crops of HR images with random flips (and 90° rotations if asked).

    Args:
        files: image paths. small_images: ``pad`` (reflect-pad to the crop) or ``skip``.
        seed: with the item key ``(epoch, index)`` (or a plain index: epoch 0), the seed of the crop and flips.
    """

    def __init__(
        self,
        files: list[Path],
        crop_size: int = 512,
        flip: bool = True,
        rotate: bool = False,
        small_images: Literal["pad", "skip"] = "pad",
        seed: int = 0,
    ) -> None:
        self.files = list(files)
        self.seed = seed
        self.crop_size = crop_size
        self.flip, self.rotate = flip, rotate
        self.small_images = small_images

    def __len__(self) -> int:
        return len(self.files)

    def _load(self, path: Path) -> Tensor:
        img = read_image(path)
        if min(img.shape[-2:]) < self.crop_size:
            if self.small_images == "skip":
                raise UnreadableImage(path, f"smaller than the crop ({tuple(img.shape[-2:])} < {self.crop_size})")
            img = fit_to_crop(img, self.crop_size)
        return img

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        epoch, index = key if isinstance(key, (tuple, list)) else (0, key)
        epoch, index = int(epoch), int(index)
        rng = random.Random(mix_seed("item", self.seed, epoch, index))
        skipped = []
        for attempt in range(MAX_CONSECUTIVE_SKIPS):
            path = self.files[(index + attempt * 7919) % len(self.files)]  # step by a prime: spread the retries
            try:
                img = self._load(path)
                break
            except UnreadableImage as err:
                skipped.append(f"{err.path}\t{err.reason}")
        else:
            raise DataError(
                f"{MAX_CONSECUTIVE_SKIPS} images in a row could not be used, e.g. {skipped[-1]}; check the data set"
            )
        s = self.crop_size
        top = rng.randint(0, img.shape[1] - s)
        left = rng.randint(0, img.shape[2] - s)
        img = img[:, top : top + s, left : left + s]
        if self.flip and rng.random() < 0.5:
            img = img.flip(-1)
        if self.rotate and rng.random() < 0.5:
            img = img.transpose(-1, -2)
        return {"hr": img.contiguous(), "path": str(path), "skipped": "\n".join(skipped)}


def center_box(h: int, w: int, size: int | None, multiple: int) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a centre crop to ``size`` (None: whole image), sides a multiple of
    ``multiple`` (the 8× VAE under a ×4 output needs HR sides divisible by 32, LR sides by 8)."""
    th, tw = (h, w) if size is None else (min(size, h), min(size, w))
    th, tw = th - th % multiple, tw - tw % multiple
    return (h - th) // 2, (w - tw) // 2, th, tw


def center_crop(img: Tensor, size: int | None, multiple: int = 32) -> Tensor:
    top, left, th, tw = center_box(img.shape[1], img.shape[2], size, multiple)
    return img[:, top : top + th, left : left + tw]


class HRValDataset(Dataset):
    """HR-only validation images (degraded on the device with a fixed per-image seed)."""

    def __init__(self, files: list[Path], crop_size: int | None = 512) -> None:
        self.files = list(files)
        self.crop_size = crop_size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict:
        path = self.files[index]
        try:
            img = read_image(path)
        except UnreadableImage as err:
            raise DataError(f"validation image unreadable: {err}") from None
        if self.crop_size is not None and min(img.shape[-2:]) < self.crop_size:
            img = fit_to_crop(img, self.crop_size)
        return {"hr": center_crop(img, self.crop_size, 32), "seed": path_seed(path), "path": str(path)}


_PAIR_SUFFIX = re.compile(r"([_\-.]?(hr|lr|gt|x4|lr4|lrx4))+$", re.IGNORECASE)


def pair_key(path: Path) -> str:
    """Stem without LR/HR markers: ``Canon_001_LR4`` and ``Canon_001_HR`` → ``canon_001``."""
    return _PAIR_SUFFIX.sub("", path.stem).lower()


def match_pairs(lr_dir: str, hr_dir: str) -> tuple[list[tuple[Path, Path]], list[str]]:
    """(LR, HR) files of two folders matched by :func:`pair_key` (searched recursively), and the unmatched keys."""
    lr_files = {pair_key(p): p for p in list_images(lr_dir)} if Path(lr_dir).is_dir() else {}
    hr_files = {pair_key(p): p for p in list_images(hr_dir)} if Path(hr_dir).is_dir() else {}
    for d, found in ((lr_dir, lr_files), (hr_dir, hr_files)):
        if not found:
            raise DataError(f"paired set: folder '{d}' is missing or holds no images")
    keys = sorted(set(lr_files) & set(hr_files))
    if not keys:
        raise DataError(f"paired set: no file names of '{lr_dir}' match those of '{hr_dir}'")
    return [(lr_files[k], hr_files[k]) for k in keys], sorted(set(lr_files) ^ set(hr_files))


def read_pair(lr_path: Path, hr_path: Path, scale: int, what: str) -> tuple[Tensor, Tensor]:
    try:
        lr, hr = read_image(lr_path), read_image(hr_path)
    except UnreadableImage as err:
        raise DataError(f"{what} image unreadable: {err}") from None
    if (hr.shape[1], hr.shape[2]) != (lr.shape[1] * scale, lr.shape[2] * scale):
        size = f"×{scale} smaller than" if scale > 1 else "the size of"
        raise DataError(f"'{lr_path}' {tuple(lr.shape[1:])} is not {size} '{hr_path}' {tuple(hr.shape[1:])}")
    return lr, hr


class PairedDataset(Dataset):
    """Real LR–HR pairs (RealSR, DRealSR, StableSR test sets; LOL-v2's Low/Normal with ``scale=1``): matched by
    file stem, the LR exactly ``scale`` times smaller (×4 by default)."""

    def __init__(self, lr_dir: str, hr_dir: str, crop_size: int | None = None, scale: int = 4) -> None:
        self.pairs, self.unmatched = match_pairs(lr_dir, hr_dir)
        self.crop_size = crop_size
        self.scale = scale

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict:
        lr_path, hr_path = self.pairs[index]
        s = self.scale
        lr, hr = read_pair(lr_path, hr_path, s, "test")
        # No rounding to a multiple of 8: the evaluation pads the LR to the model's alignment and crops the SR back.
        size = None if self.crop_size is None else self.crop_size // s
        top, left, th, tw = center_box(lr.shape[1], lr.shape[2], size, 1)
        lr = lr[:, top : top + th, left : left + tw]
        hr = hr[:, s * top : s * (top + th), s * left : s * (left + tw)]  # the same region, ×s
        return {"lr": lr, "hr": hr, "seed": path_seed(hr_path), "path": str(hr_path)}


def read_pair_list(meta: str | Path) -> list[tuple[Path, Path]]:
    """A pair list: one ``LR_PATH HR_PATH`` per line (space- or tab-separated, relative to the list's folder;
    ``#`` comments), e.g. LOL-v2-synthetic's ``Low/x.png Normal/x.png`` (``data/lolv2_meta.py`` writes them)."""
    meta = Path(meta)
    if not meta.is_file():
        raise DataError(f"pair list '{meta}' not found")
    pairs = []
    for n, line in enumerate(meta.read_text(encoding="utf-8").splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split("\t") if "\t" in line else line.split()
        if len(parts) != 2:
            raise DataError(f"pair list '{meta}', line {n}: expected 'LR_PATH HR_PATH', got {line!r}")
        pairs.append((meta.parent / parts[0].strip(), meta.parent / parts[1].strip()))
    if not pairs:
        raise DataError(f"pair list '{meta}' holds no pairs")
    return pairs


class PairListDataset(PairedDataset):
    """Evaluation pairs from pair lists (:func:`read_pair_list`), whole images or a centre crop, as
    :class:`PairedDataset`."""

    def __init__(self, pairs: list[tuple[Path, Path]], crop_size: int | None = None, scale: int = 4) -> None:
        self.pairs, self.unmatched, self.crop_size, self.scale = list(pairs), [], crop_size, scale


class PairedTrainDataset(Dataset):
    """Random aligned crops of (LR, HR) training pairs with the same random flips (and 90° rotations if asked):
    paired training data such as LOL-v2's Low/Normal (``scale=1``, no synthetic degradation). ``crop_size`` is the
    HR crop; the draws are a function of (seed, epoch, index), as :class:`HRTrainDataset`."""

    def __init__(self, pairs: list[tuple[Path, Path]], crop_size: int = 256, scale: int = 1, flip: bool = True,
                 rotate: bool = False, seed: int = 0) -> None:
        if crop_size % scale:
            raise DataError(f"paired training: crop_size {crop_size} is not a multiple of the scale {scale}")
        self.pairs, self.crop_size, self.scale = list(pairs), crop_size, scale
        self.flip, self.rotate, self.seed = flip, rotate, seed

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        epoch, index = key if isinstance(key, (tuple, list)) else (0, key)
        rng = random.Random(mix_seed("pair", self.seed, int(epoch), int(index)))
        lr_path, hr_path = self.pairs[int(index)]
        s, c = self.scale, self.crop_size // self.scale
        lr, hr = read_pair(lr_path, hr_path, s, "training")
        if min(lr.shape[-2:]) < c:
            lr, hr = fit_to_crop(lr, c), fit_to_crop(hr, c * s)
        top, left = rng.randint(0, lr.shape[1] - c), rng.randint(0, lr.shape[2] - c)
        lr = lr[:, top : top + c, left : left + c]
        hr = hr[:, s * top : s * (top + c), s * left : s * (left + c)]
        if self.flip and rng.random() < 0.5:
            lr, hr = lr.flip(-1), hr.flip(-1)
        if self.rotate and rng.random() < 0.5:
            lr, hr = lr.transpose(-1, -2), hr.transpose(-1, -2)
        return {"lr": lr.contiguous(), "hr": hr.contiguous(), "path": str(hr_path), "skipped": ""}
