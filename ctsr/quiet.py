"""Lines the libraries print that a ctsr user cannot act on, silenced one message at a time for the commands.

:func:`quiet_libraries` runs before a command imports anything heavy (``ctsr.cli``). Each filter matches one
message, never a whole logger or warning category, so anything else those libraries say still reaches the user:

* ``kernels``: "Skipping publisher trust check for 'kernels-community/quantization-bitsandbytes' because Hugging
  Face Hub is in offline mode." — pyiqa imports bitsandbytes, whose CPU backend asks ``kernels`` for an optional
  4-bit kernel at import time; ctsr never runs 4-bit layers, and offline mode is how ctsr runs (a logging filter
  on ``kernels._internals.hf_hub``).
* Lightning: "Found N module(s) in eval mode at the start of training" — the frozen teachers, VAE decoder and
  metric networks are in eval mode on purpose (:mod:`ctsr.lit`); "💡 Tip: … litlogger/litmodels" (an
  advertisement, logged at every fit); "`isinstance(treespec, LeafSpec)` is deprecated" (Lightning's own use of a
  torch API, fixed upstream); "The number of training batches (N) is smaller than the logging interval" (ctsr's runs
  are counted in steps, and Lightning logs every n global steps across epochs: nothing is lost).
* transformers: the "Loading weights" progress bar of ``from_pretrained`` (SD's text encoder, a few seconds),
  switched off only while :func:`ctsr.models.loading.load_part` loads a part (:func:`no_loading_bars`).

ctsr's own warnings print as one line, ``ctsr: warning: …`` (:func:`format_warning`); the libraries' keep Python's
format.

torchvision's ``pretrained``/``weights`` deprecation warnings, raised by the ``lpips`` package's own backbones, are
silenced where ctsr builds them (:mod:`ctsr.nets.lpips`, :func:`lpips_backbone_warnings`).
"""
from __future__ import annotations

import contextlib
import logging
import re
import warnings
from collections.abc import Iterator
from pathlib import Path

_KERNELS_OFFLINE = "Skipping publisher trust check for 'kernels-community/"
_LIGHTNING_TIP = "💡 Tip: "
_DONE = False


class _DropMessage(logging.Filter):
    """Drops the records whose message starts with ``prefix``; lets every other record through."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            return not str(record.getMessage()).startswith(self.prefix)
        except Exception:  # a record whose arguments do not format: not ours to judge
            return True


_PACKAGE = Path(__file__).resolve().parent
_library_format = warnings.formatwarning


def format_warning(message, category, filename, lineno, line=None) -> str:
    """ctsr's own warnings as one line, ``ctsr: warning: <message>`` (they are written to be read by a user, like
    its errors: the source line and path say nothing more); the libraries' warnings keep Python's format, whose path
    tells where they come from."""
    try:
        ours = Path(filename).resolve().is_relative_to(_PACKAGE)  # not a sibling named ctsr-something
    except (OSError, TypeError, ValueError):
        ours = False
    if ours:
        return f"ctsr: warning: {' '.join(str(message).split())}\n"
    return _library_format(message, category, filename, lineno, line)


def quiet_libraries() -> None:
    """Install the filters above and :func:`format_warning` (once; cheap: imports nothing heavy)."""
    global _DONE
    if _DONE:
        return
    _DONE = True
    warnings.formatwarning = format_warning
    logging.getLogger("kernels._internals.hf_hub").addFilter(_DropMessage(_KERNELS_OFFLINE))
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(_DropMessage(_LIGHTNING_TIP))
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")
    warnings.filterwarnings("ignore", message=re.escape("`isinstance(treespec, LeafSpec)` is deprecated"))
    # logging counts global steps, across epochs: a short epoch (19 photos, batch 4) loses no log line
    warnings.filterwarnings("ignore", message=r"The number of training batches \(\d+\) is smaller than the logging "
                                              r"interval")


@contextlib.contextmanager
def lpips_backbone_warnings() -> Iterator[None]:
    """Silences torchvision's two deprecation warnings about ``pretrained=`` that the ``lpips`` package's backbones
    (``tv.vgg16(pretrained=…)``, alexnet, squeezenet) raise while they are built; nothing else."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"The parameter 'pretrained' is deprecated since 0\.13")
        warnings.filterwarnings("ignore", message=r"Arguments other than a weight enum or `None` for 'weights' "
                                                  r"are deprecated since 0\.13")
        yield


@contextlib.contextmanager
def no_loading_bars() -> Iterator[None]:
    """transformers' progress bars ("Loading weights") off while the block runs, as they were afterwards; nothing
    else changes (huggingface_hub's download bars stay)."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover - transformers is a dependency
        yield
        return
    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            hf_logging.enable_progress_bar()
