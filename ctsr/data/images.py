"""Reading and writing images robustly: any mode PIL knows → RGB float (3,H,W) in [0,1].

Handles EXIF orientation, grayscale, RGBA/LA (composited on white), palette and 16-bit images. A file that cannot be
decoded raises :class:`UnreadableImage` with the path and the reason; callers decide whether to skip it.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps
from torch import Tensor

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
# The largest image ctsr decodes, in pixels (width × height): PIL's own decompression-bomb limit (MAX_IMAGE_PIXELS,
# 89 478 485 ≈ 9459²), pinned here so that no other library's setting moves it. A larger image (a small file can
# declare 400 MP of zeros) is refused from its header, before any pixel is decoded (docs/reliability.md).
MAX_PIXELS = 89_478_485


class UnreadableImage(Exception):
    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = str(path), reason


def list_images(root: str | Path) -> list[Path]:
    """Image files below ``root`` (recursive), sorted, by extension (case-insensitive)."""
    root = Path(root)
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _to_rgb_array(img: Image.Image) -> np.ndarray:
    """PIL image of any mode → float32 (H,W,3) in [0,1]."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float32)
        peak = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = np.clip(arr / peak, 0, 1)
        return np.repeat(arr[..., None], 3, axis=2)
    if img.mode == "F":  # 32-bit float TIFF: NaN/inf pixels become 0/1, never NaN into a network
        arr = np.clip(np.nan_to_num(np.asarray(img, dtype=np.float32), nan=0.0, posinf=1.0, neginf=0.0), 0, 1)
        return np.repeat(arr[..., None], 3, axis=2)
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    arr = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    return arr


def peek_size(path: str | Path) -> tuple[int, int] | None:
    """(w, h) of an image from its file header, upright (EXIF orientations that swap the sides), without decoding
    the pixels — nor PIL's decompression-bomb limit: callers bound sizes themselves. None when the header is
    unreadable (:func:`read_image` reports why)."""
    previous = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = None
        with Image.open(path) as img:
            w, h = img.size
            if img.getexif().get(0x0112, 1) in (5, 6, 7, 8):
                w, h = h, w
            return w, h
    except Exception:  # noqa: BLE001 — any failure here is reported, with its reason, when the image is read
        return None
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def read_image(path: str | Path) -> Tensor:
    """(3,H,W) float32 in [0,1], upright (EXIF orientation applied). Raises :class:`UnreadableImage`."""
    path = Path(path)
    size = peek_size(path)
    if size is not None and size[0] * size[1] > MAX_PIXELS:
        raise UnreadableImage(path, f"{size[0]}×{size[1]} = {size[0] * size[1]:,} pixels, above the {MAX_PIXELS:,} "
                                    f"ctsr decodes (a guard against decompression bombs); downscale or split it")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            previous = ImageFile.LOAD_TRUNCATED_IMAGES
            ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, not a grey half-image
            try:
                with Image.open(path) as img:
                    if img.size[0] * img.size[1] > MAX_PIXELS:  # PIL's own check follows its global setting
                        raise Image.DecompressionBombError(f"{img.size[0]}×{img.size[1]} pixels")
                    img.load()
                    img = ImageOps.exif_transpose(img)
                    arr = _to_rgb_array(img)
            finally:
                ImageFile.LOAD_TRUNCATED_IMAGES = previous
    except (OSError, ValueError, SyntaxError, EOFError, MemoryError, Image.DecompressionBombWarning,
            Image.DecompressionBombError) as err:
        raise UnreadableImage(path, f"{type(err).__name__}: {err}") from None
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise UnreadableImage(path, "empty image")
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


def write_image(x: Tensor, path: str | Path | BinaryIO, **save_kwargs) -> None:
    """Save (3,H,W) in [0,1] as 8-bit; the format follows the extension (an open file: give ``format``)."""
    arr = (x.detach().float().clamp(0, 1).cpu().numpy().transpose(1, 2, 0) * 255).round().astype(np.uint8)
    if isinstance(path, (str, Path)):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, **save_kwargs)
