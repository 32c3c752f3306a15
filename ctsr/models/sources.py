"""Where a model comes from, before anything is loaded: the name ``mini`` (the mini world's shipped model), a Hub id
``owner/name[@revision]`` and a CTSR folder (on disk or the Hub's cached snapshot) with its weights file.

No model class is imported here: :mod:`ctsr.models.control` (loading), :mod:`ctsr.models.export` and
:mod:`ctsr.models.hub` (publishing) all build on these functions.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from ctsr.errors import ConfigError, MissingWeightsError, describe

WEIGHTS_NAME = "ctsr.safetensors"
CONFIG_NAME = "config.json"
CARD_NAME = "README.md"
FOLDER_FILES = (WEIGHTS_NAME, CONFIG_NAME, CARD_NAME)
# owner/name as the Hub spells repo ids (letters, digits, '-', '_', '.'), optionally @revision
_HUB_ID = re.compile(r"^(?P<id>[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)(?:@(?P<rev>[\w./-]+))?$")


def resolve_model_spec(spec: str | Path) -> Path:
    """A model file named by the user: ``mini`` is the mini-world model shipped in the package; anything else is a
    path."""
    if str(spec) == "mini":
        from ctsr.mini import MODEL

        if not MODEL.is_file():
            raise MissingWeightsError(f"the shipped mini-world model '{MODEL}' is missing (build it with `make mini "
                                      f"SHIP=1`)")
        return MODEL
    return Path(spec)


def parse_hub_id(text: str) -> tuple[str, str | None] | None:
    """``owner/name`` or ``owner/name@revision`` → (repo id, revision); None when ``text`` is not of that form."""
    m = _HUB_ID.match(str(text))
    if m is None or ".." in m.group("id") or m.group("id").endswith((".safetensors", ".ckpt")):
        return None
    return m.group("id"), m.group("rev")


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def resolve_folder(repo_or_path: str | Path, revision: str | None = None) -> Path:
    """A local folder, or the cached snapshot of a Hub repo (downloaded unless offline): the folder with the files."""
    path = Path(repo_or_path).expanduser()
    if path.is_dir():
        if revision is not None:
            raise ConfigError(f"revision: '{revision}' given for the local folder '{path}' (revisions are for hub ids)")
        return path
    parsed = parse_hub_id(str(repo_or_path))
    if parsed is None:
        raise MissingWeightsError(f"model '{repo_or_path}' not found: neither a file, a folder, nor a hub id "
                                  f"(owner/name)")
    repo_id, rev = parsed
    if revision is not None and rev is not None and revision != rev:
        raise ConfigError(f"revision: '{repo_or_path}' names revision '{rev}', and revision='{revision}' was given")
    revision = revision or rev
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"'{repo_id}'" + (f" (revision '{revision}')" if revision else "")
    try:
        folder = snapshot_download(repo_id, revision=revision, allow_patterns=list(FOLDER_FILES),
                                   library_name="ctsr")
    except LocalEntryNotFoundError:
        from huggingface_hub import constants

        if _offline():
            raise MissingWeightsError(
                f"model {where} is not a local file or folder, and not in the Hugging Face cache "
                f"({constants.HF_HUB_CACHE}); HF_HUB_OFFLINE=1 forbids downloading it: run once with HF_HUB_OFFLINE=0, "
                f"or pass a local folder or file") from None
        raise MissingWeightsError(f"model {where} could not be downloaded from the Hugging Face Hub, and is not in "
                                  f"the cache ({constants.HF_HUB_CACHE}): check the connection") from None
    except RevisionNotFoundError:
        raise MissingWeightsError(f"model {where}: the Hub repo has no such revision (branch, tag or commit)") from None
    except GatedRepoError:
        raise MissingWeightsError(f"model {where} is gated: accept its terms on the Hub and log in "
                                  f"(`hf auth login`)") from None
    except RepositoryNotFoundError:
        raise MissingWeightsError(f"model {where}: no such Hub repo (or it is private: log in with "
                                  f"`hf auth login`)") from None
    except (HfHubHTTPError, OSError) as err:
        raise MissingWeightsError(f"model {where} could not be fetched from the Hub ({describe(err)})") from None
    return Path(folder)


def weights_file(folder: Path) -> Path:
    """The model file of a CTSR folder: ``config.json``'s ``weights`` entry, else ``ctsr.safetensors``."""
    name = WEIGHTS_NAME
    config = folder / CONFIG_NAME
    if config.is_file():
        try:
            name = json.loads(config.read_text()).get("weights", WEIGHTS_NAME)
        except (ValueError, AttributeError, RecursionError, OSError) as err:
            raise ConfigError(f"'{config}' is not a CTSR config ({describe(err)})") from None
        if not isinstance(name, str) or not name or Path(name).name != name:
            raise ConfigError(f"'{config}': 'weights' must be a file name in the folder, got {str(name)[:80]!r}")
    path = folder / name
    if not path.is_file():
        raise MissingWeightsError(f"'{folder}' holds no CTSR model file '{name}' (a CTSR folder has {WEIGHTS_NAME}, "
                                  f"{CONFIG_NAME} and {CARD_NAME}; write one with `ctsr push FILE ID --dry-run --out "
                                  f"DIR`)")
    return path
