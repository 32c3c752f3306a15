"""The weight files each metric needs, where its library caches them, and the check that runs before any is built.

Libraries download these on first use on a connected machine (``download_weights`` does it for a list of metrics).
Offline, :func:`check_weights` raises one :class:`MissingWeightsError` that names, for every missing file, the
metric, the file and the folder to put it in — before any network is built or any image is processed. Every file
that is there is then checked to read as tensors (or arrays) only (:func:`check_file`): a pickle that would run code,
planted where the message above says to put a download, is refused in one line naming it before the library that
would unpickle it (torchvision, pyiqa: ``weights_only=False``) touches it.

Folders (all resolved when checked, so ``TORCH_HOME`` / ``HF_HOME`` set before the run are honoured):

- torch hub checkpoints, ``$TORCH_HOME/hub/checkpoints``: torchvision's AlexNet (LPIPS) and VGG16 (LPIPS-VGG,
  DISTS backbones).
- pyiqa's cache, ``pyiqa.utils.download_util.DEFAULT_CACHE_DIR`` = ``$TORCH_HOME/hub/pyiqa`` (fixed when pyiqa is
  imported): the LPIPS-Alex linear heads, DISTS heads, the FID Inception, NIQE's parameters, MUSIQ (KonIQ), MANIQA (PIPAL).
- ``$TORCH_HOME/hub/clip``: OpenAI CLIP RN50, which pyiqa's CLIP-IQA loads.
- the Hugging Face hub cache, ``$HF_HOME/hub``: timm's ViT-B/8 that pyiqa's MANIQA builds before loading its own
  checkpoint.
- ctsr's cache (``$CTSR_CACHE``, default ``~/.cache/ctsr``): NIQE's pristine parameters from BasicSR's sdist, which
  ``make mini-weights`` fetches from PyPI. NIQE uses pyiqa's own file when it is cached, else these.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ctsr.checkpoints import check_weight_file
from ctsr.errors import ConfigError, MissingWeightsError, describe, shown
from ctsr.weights import NIQE_BASICSR_FILE, VGG16_FILE, ctsr_cache, torch_hub_checkpoints

# pyiqa hosts its files on the Hugging Face repo chaofengc/IQA-PyTorch-Weights (arch_util.get_url_from_name).
_PYIQA_URL = "https://huggingface.co/chaofengc/IQA-PyTorch-Weights/resolve/main/"
_CLIP_RN50_URL = (
    "https://openaipublic.azureedge.net/clip/models/"
    "afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762/RN50.pt"
)
# timm's default pretrained tag of 'vit_base_patch8_224', the backbone pyiqa's MANIQA creates with pretrained=True.
MANIQA_VIT_REPO = "timm/vit_base_patch8_224.augreg2_in21k_ft_in1k"


def pyiqa_cache_dir() -> Path:
    """The folder pyiqa's ``load_file_from_url`` reads and downloads to."""
    from pyiqa.utils import download_util

    return Path(download_util.DEFAULT_CACHE_DIR)


def clip_cache_dir() -> Path:
    """The folder pyiqa's CLIP loader (``clip_model.load``) reads and downloads to."""
    import torch

    return Path(torch.hub.get_dir()) / "clip"


def hf_hub_cache_dir() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


@dataclass(frozen=True)
class WeightFile:
    """One file a metric needs: ``store`` is 'torch_hub', 'pyiqa', 'clip' or 'hf_hub' (a Hugging Face repo file)."""

    metric: str
    file: str
    store: str
    what: str
    source: str
    repo: str = ""
    keys: tuple[str, ...] = ()  # arrays a .mat/.npz parameter file must hold

    def folder(self) -> Path:
        if self.store == "ctsr":
            return ctsr_cache()
        if self.store == "torch_hub":
            return torch_hub_checkpoints()
        if self.store == "pyiqa":
            return pyiqa_cache_dir()
        if self.store == "clip":
            return clip_cache_dir()
        return hf_hub_cache_dir()

    def present(self) -> bool:
        if self.store != "hf_hub":
            return (self.folder() / self.file).is_file()
        from huggingface_hub import try_to_load_from_cache

        # timm takes model.safetensors and falls back to pytorch_model.bin.
        return any(
            isinstance(try_to_load_from_cache(self.repo, name, cache_dir=self.folder()), str)
            for name in (self.file, "pytorch_model.bin")
        )

    def paths(self) -> list[Path]:
        """The files of this entry that are there (what the library would read)."""
        if self.store != "hf_hub":
            path = self.folder() / self.file
            return [path] if path.is_file() else []
        from huggingface_hub import try_to_load_from_cache

        found = (try_to_load_from_cache(self.repo, name, cache_dir=self.folder())
                 for name in (self.file, "pytorch_model.bin"))
        return [Path(p) for p in found if isinstance(p, str)]

    def check(self) -> None:
        """Refuse, in one line naming it, a present file that does not read as tensors (or arrays): a pickle that
        would run code, a broken file. Run before the library is allowed to read it."""
        for path in self.paths():
            check_file(path, f"metric '{self.metric}' weights", self.keys)

    def message(self) -> str:
        if self.store == "hf_hub":
            return (
                f"metric '{self.metric}' needs {self.what}: file '{self.file}' of the Hugging Face repo '{self.repo}' "
                f"is not in the hub cache '{self.folder()}' (on a connected machine: "
                f"`hf download {self.repo} {self.file}` or `ctsr.metrics.download_weights(['{self.metric}'])`; "
                f"set HF_HOME to use another cache)."
            )
        if self.store == "ctsr":
            return (f"metric '{self.metric}' needs {self.what}: '{self.file}' not found in '{self.folder()}'; "
                    f"write it with {self.source} (set CTSR_CACHE to use another folder).")
        return (
            f"metric '{self.metric}' needs {self.what}: weight file '{self.file}' not found. Put it in "
            f"'{self.folder()}' (download: {self.source}); set TORCH_HOME to use another folder."
        )


# torchvision's AlexNet ImageNet weights (AlexNet_Weights.IMAGENET1K_V1), the backbone of pyiqa's LPIPS.
ALEXNET_FILE = "alexnet-owt-7be5be79.pth"


def _alexnet(metric: str) -> WeightFile:
    return WeightFile(metric, ALEXNET_FILE, "torch_hub", "torchvision's ImageNet AlexNet",
                      "https://download.pytorch.org/models/" + ALEXNET_FILE)


def _vgg(metric: str) -> WeightFile:
    return WeightFile(metric, VGG16_FILE, "torch_hub", "torchvision's ImageNet VGG16",
                      "https://download.pytorch.org/models/" + VGG16_FILE)


def _pyiqa(metric: str, file: str, what: str) -> WeightFile:
    return WeightFile(metric, file, "pyiqa", what, _PYIQA_URL + file)


class EitherFile(WeightFile):
    """A metric satisfied by either of two files: this one (preferred) or ``other``."""

    def __init__(self, first: WeightFile, other: WeightFile) -> None:
        super().__init__(first.metric, first.file, first.store, first.what, first.source, first.repo)
        object.__setattr__(self, "other", other)

    def present(self) -> bool:
        return super().present() or self.other.present()

    def check(self) -> None:  # the file that is used: this one when present, else the other
        if super().present():
            super().check()
        else:
            self.other.check()

    def message(self) -> str:
        return super().message() + " Or: " + self.other.message()


NIQE_PYIQA = WeightFile("niqe", "niqe_modelparameters.mat", "pyiqa", "the NIQE pristine-image model parameters "
                        "(pyiqa)", _PYIQA_URL + "niqe_modelparameters.mat", keys=("mu_prisparam", "cov_prisparam"))
NIQE_BASICSR = WeightFile("niqe", NIQE_BASICSR_FILE, "ctsr", "the NIQE pristine-image parameters shipped in "
                          "BasicSR's sdist (basicsr 1.4.2)", "`make mini-weights` (python -m ctsr.mini.assets)",
                          keys=("mu_pris_param", "cov_pris_param"))

# File names as in each library's default_model_urls (tests/test_metrics.py checks them against the installed code).
REQUIRED_FILES: dict[str, tuple[WeightFile, ...]] = {
    "psnr": (),
    "ssim": (),
    "lpips": (_alexnet("lpips"),
              _pyiqa("lpips", "LPIPS_v0.1_alex-df73285e.pth", "the LPIPS-Alex v0.1 linear heads (pyiqa)")),
    # The LPIPS-VGG linear heads ship inside the lpips package.
    "lpips_vgg": (_vgg("lpips_vgg"),),
    "dists": (_vgg("dists"), _pyiqa("dists", "DISTS_weights-f5e65c96.pth", "the DISTS weights (pyiqa)")),
    "fid": (_pyiqa("fid", "pt_inception-2015-12-05-6726825d.pth", "the FID Inception-v3 (pytorch-fid port, pyiqa)"),),
    "niqe": (EitherFile(NIQE_PYIQA, NIQE_BASICSR),),
    "musiq": (_pyiqa("musiq", "musiq_koniq_ckpt-e95806b9.pth", "the MUSIQ KonIQ-10k checkpoint (pyiqa)"),),
    "maniqa": (
        _pyiqa("maniqa", "MANIQA_PIPAL-ae6d356b.pth", "the MANIQA PIPAL checkpoint (pyiqa)"),
        WeightFile("maniqa", "model.safetensors", "hf_hub", "timm's ViT-B/8 backbone (built before the MANIQA "
                   "checkpoint overwrites it)", f"https://huggingface.co/{MANIQA_VIT_REPO}", MANIQA_VIT_REPO),
    ),
    "clipiqa": (WeightFile("clipiqa", "RN50.pt", "clip", "OpenAI CLIP RN50", _CLIP_RN50_URL),),
}


def niqe_parameters() -> tuple[Path, str]:
    """(file, source) of NIQE's pristine parameters: pyiqa's ``niqe_modelparameters.mat`` when cached, else
    BasicSR's ``niqe_pris_params.npz`` in ctsr's cache; :class:`MissingWeightsError` when neither is there."""
    if NIQE_PYIQA.present():
        return NIQE_PYIQA.folder() / NIQE_PYIQA.file, "pyiqa niqe_modelparameters.mat"
    if NIQE_BASICSR.present():
        return NIQE_BASICSR.folder() / NIQE_BASICSR.file, "BasicSR 1.4.2 niqe_pris_params.npz"
    check_weights(["niqe"])
    raise AssertionError("unreachable")


def check_file(path: Path, what: str, keys: tuple[str, ...] = ()) -> None:
    """One file as its reader will see it, refused in one line naming it when it is not weights or arrays only:
    ``.mat`` (scipy.io.loadmat: MATLAB arrays, it never unpickles) and ``.npz`` (``np.load(allow_pickle=False)``:
    an object array is refused) with the arrays ``keys``; anything else a weights-only pickle, a safetensors file
    or a TorchScript archive's tensors (:func:`ctsr.checkpoints.check_weight_file`: tensor data is not read)."""
    suffix = path.suffix.lower()
    if suffix in (".mat", ".npz"):
        try:
            arrays = _read_arrays(path)
        except Exception as err:  # noqa: BLE001 — scipy/numpy raise several types for a foreign file
            raise ConfigError(f"{what}: '{shown(path)}' is not a readable {suffix} parameter file "
                              f"({describe(err)})") from None
        missing = [k for k in keys if k not in arrays]
        if missing:
            raise ConfigError(f"{what}: '{shown(path)}' lacks the arrays {missing}")
        return
    check_weight_file(path, what)


def _read_arrays(path: Path) -> dict:
    """The arrays of a ``.mat`` (scipy) or ``.npz`` (numpy, no pickles) file."""
    if path.suffix.lower() == ".mat":
        import scipy.io

        return scipy.io.loadmat(path)
    import numpy as np

    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def check_present(metrics: list[str] | tuple[str, ...]) -> None:
    """:meth:`WeightFile.check` on every file of ``metrics`` that is there (missing ones are not an error here:
    on a connected machine the library downloads them)."""
    for name in metrics:
        for w in REQUIRED_FILES[name]:
            w.check()


def missing_files(metrics: list[str] | tuple[str, ...]) -> list[WeightFile]:
    """The required files of ``metrics`` that are not in their folders, in order."""
    return [w for name in metrics for w in REQUIRED_FILES[name] if not w.present()]


def check_weights(metrics: list[str] | tuple[str, ...]) -> None:
    """Raise :class:`MissingWeightsError` listing every missing file of ``metrics`` (metric, file, folder); then
    refuse, in one line naming it, any of them that does not read as tensors (:func:`check_present`) — before any
    library touches it."""
    missing = missing_files(metrics)
    if missing:
        names = list(dict.fromkeys(w.metric for w in missing))
        offline = " (HF_HUB_OFFLINE=1)" if os.environ.get("HF_HUB_OFFLINE") == "1" else ""
        raise MissingWeightsError(
            f"metric weights missing{offline} for {', '.join(names)}:\n  - "
            + "\n  - ".join(w.message() for w in missing)
            + f"\nOr leave {', '.join(names)} out of `metrics`; the other metrics run without them."
        )
    check_present(metrics)
