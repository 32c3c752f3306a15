"""Where third-party weight files live, and the check that they are there before anything runs.

Libraries (torchvision, lpips, pyiqa, torchmetrics) download weights on first use. Offline that download fails deep
inside the library; these helpers check first and raise :class:`MissingWeightsError` naming the file, what needs it
and the folder to put it in.
"""
from __future__ import annotations

from pathlib import Path

from ctsr.errors import MissingWeightsError

# torchvision's VGG16 ImageNet weights, the LPIPS(vgg) backbone.
VGG16_FILE = "vgg16-397923af.pth"

# NIQE's pristine-image parameters as BasicSR's sdist ships them (basicsr 1.4.2, basicsr/metrics/): fetched into
# ctsr's own cache by `make mini-weights` (ctsr.mini.assets), so NIQE works with no download from pyiqa's host.
NIQE_BASICSR_FILE = "niqe_pris_params.npz"


def ctsr_cache() -> Path:
    """ctsr's own cache of files fetched from package registries: ``$CTSR_CACHE``, else ``~/.cache/ctsr``."""
    import os

    return Path(os.environ.get("CTSR_CACHE") or Path.home() / ".cache" / "ctsr").expanduser()


def torch_hub_checkpoints() -> Path:
    """The folder torchvision and torch.hub read cached checkpoints from (``$TORCH_HOME/hub/checkpoints``)."""
    import torch  # here, not at the top: ctsr_cache() serves commands that never load torch (the help cache)

    return Path(torch.hub.get_dir()) / "checkpoints"


def require_file(path: Path, what: str, source: str = "") -> Path:
    """Return ``path`` if it is a file, else raise an error that names it, what needs it and where to put it."""
    if not path.is_file():
        hint = f" (download: {source})" if source else ""
        raise MissingWeightsError(
            f"{what}: weight file '{path.name}' not found. Put it in '{path.parent}'{hint}; "
            f"set TORCH_HOME to use another folder."
        )
    return path
