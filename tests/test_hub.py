"""Hub loading and publishing, offline: a CTSR folder, a fake huggingface_hub cache, ``ctsr push`` with HfApi faked.

The cache is built in huggingface_hub's own layout (``models--owner--name/snapshots/<commit>/…`` and ``refs/main``)
and read by huggingface_hub's real ``snapshot_download`` with ``HF_HUB_OFFLINE``: no network anywhere.
"""
import hashlib
import json
import os
import shutil

import huggingface_hub
import pytest
import torch
from huggingface_hub import constants

from ctsr import cli
from ctsr.cli import push as push_cli
from ctsr.errors import ConfigError, MissingWeightsError
from ctsr.models import hub
from ctsr.models.export import load_model

pytestmark = pytest.mark.usefixtures("one_thread")
COMMIT = "0123456789abcdef0123456789abcdef01234567"

STAGE1_YAML = """\
trainer: {max_steps: 30}
model:
  class_path: ctsr.lit.stage1.DualTeacherDistillation
  init_args:
    fidelity_teacher:
      class_path: ctsr.models.teachers.AnchoredTeacher
      init_args: {sr_model: bicubic}
    realness_teacher: null
"""
STAGE2_YAML = """\
trainer: {max_steps: 50}
model:
  class_path: ctsr.lit.stage2.ControllabilityDistillation
  init_args:
    stage1_ckpt: %s
    fidelity_teacher:
      class_path: ctsr.models.teachers.AnchoredTeacher
      init_args: {sr_model: bicubic}
"""
METRICS_MD = """\
# val metrics at step 40

Protocol: PSNR/SSIM on Y (BT.601), crop border 0; LPIPS-VGG; images rounded to 8 bit

| t | PSNR↑ | LPIPS↓ |
|---|---|---|
| 0 | 21.50 | 0.3100 |
| 1 | 24.25 | 0.4200 |
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_controllable):
    """A stage-2 run folder as `ctsr fit` + `ctsr export` leave it (config.yaml, checkpoints, metrics.md, the
    exported file), beside its stage-1 run folder; the model is tiny, with LoRAs that change the output."""
    root = tmp_path_factory.mktemp("runs")
    model = tiny_controllable(stage1_lora=True)
    s1, s2 = root / "stage1", root / "stage2"
    (s1 / "checkpoints").mkdir(parents=True)
    (s2 / "checkpoints").mkdir(parents=True)
    (s1 / "config.yaml").write_text(STAGE1_YAML)
    (s2 / "config.yaml").write_text(STAGE2_YAML % (s1 / "checkpoints" / "last.ckpt"))
    torch.save({"global_step": 30}, s1 / "checkpoints" / "last.ckpt")
    torch.save({"global_step": 40}, s2 / "checkpoints" / "last.ckpt")
    (s2 / "metrics.md").write_text(METRICS_MD)
    return model.export(s2 / "ctsr.safetensors")


@pytest.fixture(scope="module")
def x_lr():
    return torch.rand(1, 3, 16, 24, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def reference(run, x_lr):
    """SR at t = 0, 0.5, 1 from the exported file itself: what every other way of loading must give."""
    with torch.no_grad():
        return load_model(run).sweep(x_lr, [0.0, 0.5, 1.0])


def _same_model(model, x_lr, reference):
    with torch.no_grad():
        out = model.sweep(x_lr, [0.0, 0.5, 1.0])
    assert all(torch.equal(a, b) for a, b in zip(out, reference))
    assert not torch.equal(out[0], out[2])  # the control does something: the check above can fail


@pytest.fixture(scope="module")
def folder(run, tmp_path_factory):
    out = tmp_path_factory.mktemp("folder") / "ctsr-tiny"
    assert push_cli.main([str(run), "owner/ctsr-tiny", "--dry-run", "--out", str(out)]) == 0
    return out


def test_dry_run_writes_the_folder_and_the_card(folder, run):
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "ctsr.safetensors"]
    assert (folder / "ctsr.safetensors").read_bytes() == run.read_bytes()
    config = json.loads((folder / "config.json").read_text())
    assert config["weights"] == "ctsr.safetensors" and config["format"] == "ctsr-controllable-v1"
    assert config["generator"]["pretrained"] == "tiny" and config["control"]["objective"] == "endpoint"
    card = (folder / "README.md").read_text()
    front = card.split("---")[1]
    assert "license: openrail++" in front and "library_name: ctsr" in front
    assert "base_model" not in front  # 'tiny' is no Hub id
    assert "| base model | `tiny`" in card and "| OSEDiff LoRA | none |" in card
    # teachers and steps from the two run folders' config.yaml and checkpoints
    assert "| stage 1 | `stage1` | DualTeacherDistillation | 30 | AnchoredTeacher(sr_model=bicubic) | " \
           "the initial generator, frozen (OSEDiff) |" in card
    assert "| stage 2 | `stage2` | ControllabilityDistillation | 40 (max_steps 50) | " \
           "AnchoredTeacher(sr_model=bicubic) | — |" in card
    # the run's t-sweep table, and its protocol line once
    assert "| 0 | 21.50 | 0.3100 |" in card and "| 1 | 24.25 | 0.4200 |" in card
    assert card.count("PSNR/SSIM on Y (BT.601), crop border 0; LPIPS-VGG; images rounded to 8 bit") == 1
    assert "ctsr upscale photo.jpg photo_sr.png --ckpt owner/ctsr-tiny" in card
    assert 'ControllableSR.from_pretrained("owner/ctsr-tiny")' in card


def test_card_names_a_hub_base_model_and_the_osediff_file():
    meta = {"generator": {"pretrained": "stabilityai/stable-diffusion-2-1-base",
                          "osediff_lora": "/data/weights/osediff.pkl", "lora_rank": 4, "vae_lora_rank": 4},
            "control": {"rank": 4, "objective": "endpoint", "path": "fidelity", "tau_max": 999.0,
                        "control_steps": 1}}
    card = hub.model_card("me/m", meta, {"stages": []}, "apache-2.0")
    assert "base_model: stabilityai/stable-diffusion-2-1-base" in card and "license: apache-2.0" in card
    assert "`osediff.pkl`" in card and "/data/weights" not in card  # the file's name, not the trainer's disk
    assert "No t-sweep table" in card and "not recorded here" in card


def test_load_from_a_local_folder(folder, x_lr, reference):
    _same_model(hub.load_pretrained(folder), x_lr, reference)
    _same_model(load_model(str(folder)), x_lr, reference)     # ctsr upscale/demo --ckpt FOLDER
    (folder / "ctsr.safetensors").rename(folder / "moved.safetensors")
    try:
        with pytest.raises(MissingWeightsError, match="holds no CTSR model file 'ctsr.safetensors'"):
            hub.load_pretrained(folder)
    finally:
        (folder / "moved.safetensors").rename(folder / "ctsr.safetensors")


@pytest.fixture()
def hub_cache(folder, tmp_path, monkeypatch):
    """huggingface_hub's cache layout with owner/ctsr-tiny at COMMIT (refs/main → COMMIT), offline."""
    cache = tmp_path / "hub"
    repo = cache / "models--owner--ctsr-tiny"
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir()
    for f in folder.iterdir():  # as huggingface_hub writes it: content-addressed blobs, snapshot files link to them
        blob = repo / "blobs" / hashlib.sha256(f.read_bytes()).hexdigest()
        shutil.copyfile(f, blob)
        (snapshot / f.name).symlink_to(os.path.relpath(blob, snapshot))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))  # read by huggingface_hub at import time
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def test_load_from_the_hub_cache_offline(hub_cache, x_lr, reference):
    _same_model(hub.load_pretrained("owner/ctsr-tiny"), x_lr, reference)
    _same_model(hub.load_pretrained("owner/ctsr-tiny", revision=COMMIT), x_lr, reference)
    _same_model(load_model("owner/ctsr-tiny@main"), x_lr, reference)   # --ckpt owner/name[@revision]


def test_missing_revision_or_id_offline_is_one_clear_line(hub_cache):
    with pytest.raises(MissingWeightsError) as err:
        hub.load_pretrained("owner/ctsr-tiny", revision="v2")
    msg = str(err.value)
    assert "'owner/ctsr-tiny' (revision 'v2')" in msg and "HF_HUB_OFFLINE=1" in msg and "\n" not in msg
    with pytest.raises(MissingWeightsError, match=r"'owner/nothing-here' is not a local file or folder.*"
                                                  r"HF_HUB_OFFLINE=1"):
        hub.load_pretrained("owner/nothing-here")
    with pytest.raises(MissingWeightsError, match="neither a file, a folder, nor a hub id"):
        hub.load_pretrained("not a model")


def test_upscale_cli_takes_a_hub_id(hub_cache, tmp_path, capsys, run):
    from PIL import Image

    Image.new("RGB", (12, 8), (120, 60, 30)).save(tmp_path / "in.png")
    assert cli.main(["upscale", str(tmp_path / "in.png"), str(tmp_path / "hub.png"), "--ckpt", "owner/ctsr-tiny",
                     "--t", "0.5", "--device", "cpu"]) == 0
    assert cli.main(["upscale", str(tmp_path / "in.png"), str(tmp_path / "file.png"), "--ckpt", str(run),
                     "--t", "0.5", "--device", "cpu"]) == 0
    assert (tmp_path / "hub.png").read_bytes() == (tmp_path / "file.png").read_bytes()
    capsys.readouterr()
    assert cli.main(["upscale", str(tmp_path / "in.png"), str(tmp_path / "x.png"), "--ckpt", "owner/missing"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ctsr: error: model 'owner/missing'") and "HF_HUB_OFFLINE" in err and "\n" not in err


def test_parse_hub_id():
    assert hub.parse_hub_id("owner/name") == ("owner/name", None)
    assert hub.parse_hub_id("owner/name@v1.0") == ("owner/name", "v1.0")
    assert hub.parse_hub_id("runs/stage2/checkpoints/last.ckpt") is None
    assert hub.parse_hub_id("runs/x.safetensors") is None
    assert hub.parse_hub_id("../x") is None and hub.parse_hub_id("name") is None


class FakeApi:
    """Records what ``ctsr push`` asks of the Hub (and the files, read before the temporary folder goes)."""

    calls: list = []

    def __init__(self, token=None):
        self.calls.append(("init", token))

    def create_repo(self, repo_id, **kw):
        self.calls.append(("create_repo", repo_id, kw))

    def create_branch(self, repo_id, **kw):
        self.calls.append(("create_branch", repo_id, kw))

    def upload_folder(self, repo_id, folder_path, **kw):
        from pathlib import Path

        files = {p.name: p.read_bytes() for p in Path(folder_path).iterdir()}
        self.calls.append(("upload_folder", repo_id, kw, files))
        return type("Commit", (), {"commit_url": f"https://hub.invalid/{repo_id}/commit/1"})()


def test_push_uploads_the_folder(run, folder, monkeypatch, capsys):
    FakeApi.calls = []
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setattr(hub, "_offline", lambda: False)
    assert push_cli.main([str(run), "owner/ctsr-tiny", "--private", "--branch", "v1", "--token", "tok"]) == 0
    assert "uploaded" in capsys.readouterr().out
    names = [c[0] for c in FakeApi.calls]
    assert names == ["init", "create_repo", "create_branch", "upload_folder"]
    assert FakeApi.calls[0] == ("init", "tok")
    assert FakeApi.calls[1] == ("create_repo", "owner/ctsr-tiny", {"private": True, "repo_type": "model",
                                                                   "exist_ok": True})
    assert FakeApi.calls[2][2]["branch"] == "v1"
    _, repo_id, kw, files = FakeApi.calls[3]
    assert repo_id == "owner/ctsr-tiny" and kw["revision"] == "v1"
    assert files == {p.name: p.read_bytes() for p in folder.iterdir()}  # exactly the dry run's folder


def test_push_refuses_offline_and_bad_input(run, tmp_path):
    with pytest.raises(ConfigError, match="HF_HUB_OFFLINE=1 forbids uploading"):
        push_cli.main([str(run), "owner/name"])
    with pytest.raises(ConfigError, match="not a Hub repo id"):
        push_cli.main([str(run), "just-a-name", "--dry-run"])
    with pytest.raises(MissingWeightsError, match="not found"):
        push_cli.main([str(tmp_path / "none.safetensors"), "owner/name", "--dry-run", "--out", str(tmp_path / "o")])
    (tmp_path / "bad.safetensors").write_bytes(b"junk")
    with pytest.raises(ConfigError, match="not a safetensors file"):
        push_cli.main([str(tmp_path / "bad.safetensors"), "owner/name", "--dry-run", "--out", str(tmp_path / "o")])
