"""Where third-party weight files live, and the check that they are there before anything runs.

Libraries (torchvision, lpips, pyiqa, torchmetrics) download weights on first use. Offline that download fails deep
inside the library; these helpers check first and raise :class:`MissingWeightsError` naming the file, what needs it
and the folder to put it in.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ctsr.errors import MissingWeightsError

# torchvision's VGG16 ImageNet weights, the LPIPS(vgg) backbone.
VGG16_FILE = "vgg16-397923af.pth"


def torch_hub_checkpoints() -> Path:
    """The folder torchvision and torch.hub read cached checkpoints from (``$TORCH_HOME/hub/checkpoints``)."""
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
