"""Reading the peers' release files (ResShift/SinSR, GSAD, Reti-Diff) strictly and weights-only.

``torch.load(weights_only=True)`` or safetensors through :func:`ctsr.checkpoints.read_weights` (a pickle that would
run code is refused in one line); a missing file is one :class:`MissingWeightsError` line naming the file and its
release page.
"""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from torch import Tensor, nn

from ctsr.errors import ConfigError, MissingWeightsError


def require(path: Path, what: str, page: str, note: str = "") -> Path:
    """``path`` if it is a file, else one line: what is missing, where to get it, where to put it."""
    if not path.is_file():
        raise MissingWeightsError(
            f"{what} '{path}' not found: download {path.name} from {page}{note} into '{path.parent}'"
        )
    return path


def read_state(path: str | Path, what: str, wrappers: Iterable[str] = ("state_dict",)) -> dict[str, Tensor]:
    """A flat name → tensor dict: the first of ``wrappers`` present is unwrapped; ``module.`` prefixes dropped."""
    from ctsr.checkpoints import read_weights

    state = read_weights(path, what)
    for key in wrappers:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ConfigError(f"{what}: '{path}' is not a state dict (a mapping of names to tensors)")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}


def load_strict(module: nn.Module, state: dict[str, Tensor], path: str | Path, what: str,
                ignored: Iterable[str] = (), optional: Iterable[str] = ()) -> nn.Module:
    """Load ``state`` into ``module``: every name of the module (buffers included) with its shape, nothing else —
    except names starting with an ``ignored`` prefix (in the file, not used: dropped) and ``optional`` names
    (the module's, recomputed: may be absent). Otherwise one line: what is missing / unexpected / misshapen."""
    ignored, optional = tuple(ignored), set(optional)
    state = {k: v for k, v in state.items() if not (ignored and k.startswith(ignored))}
    own = module.state_dict()
    missing = [k for k in own if k not in state and k not in optional]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        parts = [f"{name} {len(keys)} (e.g. {keys[0]})" for name, keys in
                 (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if keys]
        raise ConfigError(f"{what}: '{path}' does not match the network: " + "; ".join(parts))
    module.load_state_dict({**{k: own[k] for k in optional if k not in state}, **state}, strict=True)
    return module
