"""CTSR models that travel: load one from the Hugging Face Hub or a folder, publish one with a model card.

A model folder (on the Hub or on disk) holds three files:

    ctsr.safetensors   the exported model (``ctsr export``: stage-1 LoRA + stage-2 LoRA + the config that rebuilds it)
    config.json        what the file needs (base model, OSEDiff file, control rule), readable without torch
    README.md          the model card (base model, teachers, training steps, the t-sweep table, the metric protocol)

    from ctsr.models.hub import load_pretrained
    model = load_pretrained("owner/name")                  # the Hub, through huggingface_hub's cache
    model = load_pretrained("owner/name", revision="v1")   # a branch, tag or commit
    model = load_pretrained("path/to/folder")              # the same layout on disk

    ctsr push runs/stage2/ctsr.safetensors owner/name       # create the repo, upload the three files
    ctsr push runs/stage2/checkpoints/last.ckpt owner/name --dry-run --out card/   # write the folder only

Downloads go through ``huggingface_hub.snapshot_download`` (its cache, ``HF_HUB_CACHE``, ``HF_HUB_OFFLINE``, tokens);
offline, a model that is not in the cache fails with one line naming the id and ``HF_HUB_OFFLINE``. The base model
(SD 2.1-base) and OSEDiff's LoRA are not part of a CTSR folder: the file records where they were found at training
time, and ``pretrained``/``osediff_lora`` override that (``--pretrained``/``--osediff-lora`` on the command line).
"""
from __future__ import annotations

import json
import re
import shutil
import tempfile
from pathlib import Path

from ctsr.choices import SD21_BASE_LICENSE
from ctsr.errors import ConfigError, CTSRError, MissingWeightsError, describe
from ctsr.models.control import FORMAT, Stage1Only, load_model, load_pretrained
from ctsr.models.sources import (
    CARD_NAME,
    CONFIG_NAME,
    FOLDER_FILES,
    WEIGHTS_NAME,
    _offline,
    parse_hub_id,
    resolve_folder,
    weights_file,
)

# loading lives beside the model (ctsr.models.control) and the folder layout in ctsr.models.sources; both are
# named here too, as the Hub's side of a model
__all__ = ["CARD_NAME", "CONFIG_NAME", "FOLDER_FILES", "SD21_BASE_LICENSE", "WEIGHTS_NAME", "load_pretrained",
           "model_card", "parse_hub_id", "publish", "push", "resolve_folder", "run_facts", "weights_file",
           "write_folder"]



# -- publishing --------------------------------------------------------------------------------------------------
def run_folder(model_file: Path) -> Path:
    """The run folder of a model file: ``runs/x`` for ``runs/x/checkpoints/last.ckpt`` and ``runs/x/ctsr.safetensors``."""
    parent = model_file.resolve().parent
    return parent.parent if parent.name == "checkpoints" else parent


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        return {}
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def _class_name(spec) -> str | None:
    """``{class_path: a.b.C, init_args: {...}}`` → ``C(k=v, …)``; a plain value as it is."""
    if isinstance(spec, dict) and "class_path" in spec:
        args = spec.get("init_args") or {}
        inner = ", ".join(f"{k}={v}" for k, v in args.items() if not isinstance(v, (dict, list)))
        return f"{spec['class_path'].rsplit('.', 1)[-1]}({inner})"
    return None if spec is None else str(spec)


def _global_step(ckpt: Path) -> int | None:
    if not ckpt.is_file():
        return None
    import torch

    try:  # mmap: only the header is read, not the tensors; weights_only: no code in the file runs
        return int(torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True).get("global_step"))
    except Exception:  # noqa: BLE001 — an unreadable checkpoint only means the card omits the step count
        return None


def run_facts(model_file: Path, step: int | None = None) -> dict:
    """What a model card says about the training run, read from the run folder(s) when they are there:
    the teachers (stage 1 from the stage-1 run's ``config.yaml``), training steps, the t-sweep table."""
    facts: dict = {"stages": []}
    stage2 = run_folder(model_file)
    cfg2 = _read_yaml(stage2 / "config.yaml")
    model2 = (cfg2.get("model") or {}).get("init_args") or {}
    stage1_ckpt = model2.get("stage1_ckpt")
    stage1 = None
    if stage1_ckpt:
        p = Path(stage1_ckpt)
        for base in (Path.cwd(), stage2.parent.parent):
            if (base / p).exists() or p.is_absolute():
                stage1 = run_folder(p if p.is_absolute() else base / p)
                break
    for name, folder, cfg in (("stage 1", stage1, _read_yaml(stage1 / "config.yaml") if stage1 else {}),
                              ("stage 2", stage2, cfg2)):
        if not cfg:
            continue
        init = (cfg.get("model") or {}).get("init_args") or {}
        steps = step if name == "stage 2" and step is not None else _global_step(folder / "checkpoints" / "last.ckpt")
        planned = (cfg.get("trainer") or {}).get("max_steps")
        facts["stages"].append({
            "name": name, "run": folder.name,
            "module": (cfg.get("model") or {}).get("class_path", "?").rsplit(".", 1)[-1],
            "steps": steps, "max_steps": planned,
            "fidelity_teacher": _class_name(init.get("fidelity_teacher")),
            "realness_teacher": (_class_name(init.get("realness_teacher")) or "the initial generator, frozen (OSEDiff)")
            if name == "stage 1" else None,
        })
    table = stage2 / "metrics.md"
    if table.is_file():
        text = table.read_text()
        facts["metrics"] = text
        m = re.search(r"^Protocol: (.+)$", text, re.M)
        facts["protocol"] = m.group(1) if m else None
    return facts


def _base_model_id(pretrained: str) -> str | None:
    """A base model location that is a Hub id (for the card's ``base_model``), not a local path or 'tiny'."""
    parsed = parse_hub_id(pretrained)
    return None if parsed is None or Path(pretrained).exists() else parsed[0]


def model_card(repo_id: str, meta: dict, facts: dict, license: str) -> str:
    """The README.md of a CTSR model repo: front matter the Hub reads, then what the model is and how to run it."""
    gen, control = meta["generator"], meta["control"]
    base = gen.get("pretrained", "?")
    base_id = _base_model_id(base)
    osediff = gen.get("osediff_lora")
    front = ["---", f"license: {license}", "library_name: ctsr", "pipeline_tag: image-to-image",
             "tags: [super-resolution, image-to-image, ctsr, one-step-diffusion, controllable]"]
    if base_id:
        front.append(f"base_model: {base_id}")
    front.append("---")
    lines = [*front, "", f"# {repo_id.split('/')[-1]}: CTSR ×4 super-resolution with a fidelity–realness knob", "",
             ("A one-step diffusion ×4 super-resolution model trained with CTSR (two-stage distillation: dual "
              "teachers, then controllability), in OSEDiff's architecture. One control value t ∈ [0, 1] chooses "
              "the trade-off: **t = 0 is the realness end, t = 1 the fidelity end**."), "",
             "## Use it", "", "```bash", "pip install ctsr",
             f"ctsr upscale photo.jpg photo_sr.png --ckpt {repo_id} --t 0.5",
             f"ctsr demo --ckpt {repo_id}          # a local page with a t slider", "```", "", "```python",
             "from ctsr.models.control import ControllableSR", f'model = ControllableSR.from_pretrained("{repo_id}")',
             "```", "", "## What it needs and what it holds", "",
             "| | |", "|---|---|",
             f"| base model | `{base}`" + ("" if base_id else " (as recorded at training time; override with "
                                                           "`--pretrained`)") + " |",
             "| OSEDiff LoRA | " + (f"`{Path(osediff).name}` (OSEDiff's released file, merged into the base before "
                                    "the CTSR LoRA; give its location with `--osediff-lora`)" if osediff else
                                    "none") + " |",
             (f"| LoRA ranks | generator UNet {gen.get('lora_rank')}, VAE encoder {gen.get('vae_lora_rank')}, "
              f"control {control.get('rank')} |"),
             (f"| control rule | objective `{control.get('objective', 'eq8')}`, "
              f"path `{control.get('path', 'fidelity')}`, τ_max {control.get('tau_max')}, "
              f"K {control.get('control_steps')} |")]
    if meta.get("selected_t") is not None:
        lines.append(f"| selected t | {meta['selected_t']:g} (chosen on a validation split) |")
    lines += ["", "## Training", ""]
    if facts["stages"]:
        lines += ["| stage | run | module | steps | fidelity teacher | realness teacher |",
                  "|---|---|---|---|---|---|"]
        for s in facts["stages"]:
            steps = (f"{s['steps']}" if s["steps"] is not None else "?") + (
                f" (max_steps {s['max_steps']})" if s["max_steps"] is not None and s["max_steps"] != s["steps"] else "")
            lines.append(f"| {s['name']} | `{s['run']}` | {s['module']} | {steps} | {s['fidelity_teacher'] or '—'} | "
                         f"{s['realness_teacher'] or ('—' if s['name'] == 'stage 2' else '?')} |")
    else:
        lines.append("The run folder (its `config.yaml`) was not found next to the model file: teachers and training "
                     "steps are not recorded here.")
    lines += ["", "## Evaluation across t", ""]
    if facts.get("metrics"):
        table = re.sub(r"^# .*\n+", "", facts["metrics"], count=1)  # the run's own title: the card has its own
        table = re.sub(r"^Protocol: .*\n+", "", table, flags=re.M)   # said once, below the table
        lines += [table.rstrip(), ""]
    else:
        lines += ["No t-sweep table (`metrics.md`) was found in the run folder.", ""]
    protocol = facts.get("protocol") or ("OSEDiff's test_metrics.py protocol (pyiqa): PSNR/SSIM on Y (BT.601), no "
                                         "border crop; LPIPS (AlexNet), DISTS, FID; NIQE, MUSIQ, MANIQA, CLIPIQA")
    lines += [f"Metric protocol: {protocol}.", "", "## Licence", "",
              (f"`{license}`. A model built on Stable Diffusion 2.1-base carries the use restrictions of its "
               "CreativeML Open RAIL++-M licence; OSEDiff's LoRA has its own licence."), ""]
    return "\n".join(lines)


def _model_meta(path: Path) -> dict:
    """The metadata of an exported CTSR file (no tensors read)."""
    from ctsr.checkpoints import json_meta, safetensors_metadata
    from ctsr.errors import shown
    from ctsr.models.control import (
        check_control_config,
        check_generator_config,
        check_selection,
    )

    meta = safetensors_metadata(path, "FILE")
    if meta.get("format") != FORMAT:
        raise ConfigError(f"FILE: '{shown(path)}' is not a CTSR model file (format {str(meta.get('format'))[:80]!r})")
    where = f"'{shown(path)}': metadata"
    out = {"format": meta["format"], "generator": json_meta(meta, "generator", path),
           "control": json_meta(meta, "control", path)}
    check_generator_config(out["generator"], f"{where} 'generator'")
    check_control_config(out["control"], f"{where} 'control'")
    if meta.get("selected_t"):
        selected = json_meta(meta, "selected_t", path)
        check_selection(selected, f"{where} 'selected_t'")
        out["selected_t"] = float(selected["t"])
    return out


def write_folder(model_file: str | Path, repo_id: str, out: str | Path, license: str = SD21_BASE_LICENSE) -> Path:
    """Write the CTSR folder of ``model_file`` (an exported .safetensors or a stage-2 .ckpt) into ``out``:
    ``ctsr.safetensors``, ``config.json`` and the model card ``README.md``."""
    model_file = Path(model_file).expanduser()
    if not model_file.is_file():
        raise MissingWeightsError(f"FILE: '{model_file}' not found (a .safetensors from `ctsr export` or a stage-2 "
                                  f".ckpt from `ctsr fit`)")
    out = Path(out)
    weights, step, model = out / WEIGHTS_NAME, None, None
    if model_file.suffix == ".safetensors":
        from ctsr.checkpoints import read_safetensors
        from ctsr.models.control import check_model_file

        _model_meta(model_file)  # a wrong file fails before anything is copied (or any folder made)
        check_model_file(*read_safetensors(model_file, "FILE"), model_file)  # tensors: kinds, ranks, finite
    else:
        model = load_model(model_file)
        if isinstance(model, Stage1Only):
            raise ConfigError(f"FILE: '{model_file}' is a stage-1 checkpoint; push a stage-2 one")
    out.mkdir(parents=True, exist_ok=True)
    if model is None:
        if model_file.resolve() != weights.resolve():
            shutil.copyfile(model_file, weights)
    else:
        model.export(weights)
        step = _global_step(model_file)
    meta = _model_meta(weights)
    config = {"library_name": "ctsr", "weights": WEIGHTS_NAME, **meta}
    (out / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    (out / CARD_NAME).write_text(model_card(repo_id, meta, run_facts(model_file, step), license))
    return out


def push(model_file: str | Path, repo_id: str, private: bool = False, revision: str | None = None,
         license: str = SD21_BASE_LICENSE, message: str | None = None, token: str | None = None) -> str:
    """Create ``repo_id`` on the Hub (kept if it exists), and upload the CTSR folder of ``model_file`` to it
    (to branch ``revision``, created from main when missing). Returns the commit's URL."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    if _offline():
        raise ConfigError("push: HF_HUB_OFFLINE=1 forbids uploading (unset it, or use --dry-run --out DIR)")
    with tempfile.TemporaryDirectory(prefix="ctsr-push-") as tmp:
        folder = write_folder(model_file, repo_id, tmp, license)
        api = HfApi(token=token)
        try:
            api.create_repo(repo_id, private=private, repo_type="model", exist_ok=True)
            if revision:
                api.create_branch(repo_id, branch=revision, repo_type="model", exist_ok=True)
            info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model", revision=revision,
                                     commit_message=message or f"Upload CTSR model ({Path(model_file).name})")
        except (HfHubHTTPError, OSError, ValueError) as err:
            raise CTSRError(f"push to '{repo_id}' failed ({describe(err)}); log in with `hf auth login` or pass "
                            f"--token") from None
    return str(getattr(info, "commit_url", info))


def publish(file: str | Path, repo_id: str, *, private: bool = False, revision: str | None = None,
            license: str = SD21_BASE_LICENSE, message: str | None = None, token: str | None = None,
            dry_run: bool = False, out: Path | None = None) -> int:
    """``ctsr push``: upload ``file`` as a CTSR folder to ``repo_id``, or (``dry_run``/``out``) write the folder only.
    Returns 0."""
    if parse_hub_id(repo_id) is None or "@" in repo_id:
        raise ConfigError(f"repo_id: '{repo_id}' is not a Hub repo id (owner/name)")
    if dry_run or out is not None:
        out = out or Path(f"{repo_id.replace('/', '--')}")
        if out.exists() and (not out.is_dir() or any(p.name not in FOLDER_FILES for p in out.iterdir())):
            raise ConfigError(f"--out: '{out}' holds other files; give an empty or new folder")
        write_folder(file, repo_id, out, license)
        print(f"ctsr push: wrote {', '.join(FOLDER_FILES)} to {out} (dry run, nothing uploaded)")
        return 0
    url = push(file, repo_id, private, revision, license, message, token)
    print(f"ctsr push: uploaded {file} to {repo_id}" + (f"@{revision}" if revision else "")
          + f": {url}")
    return 0
