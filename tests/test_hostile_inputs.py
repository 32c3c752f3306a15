"""What a new user and a hostile file give every command (issue 21, docs/reliability.md rows 68-): crafted model
files (metadata size, nesting, types, unknown keys, huge ranks, odd tensors), images (1 px, decompression bombs,
truncated, odd modes) and names (spaces, bytes that are not UTF-8, leading dashes). Each case asserts the exit
status, one line from ctsr (never a traceback, never "internal error") and that nothing partial is left."""
from __future__ import annotations

import io
import json
import os
import shutil
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ctsr.cli import main

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread", "lightning_logs_to_stderr")


def one_line(capsys, *texts: str) -> str:
    """The run's stderr holds no traceback and exactly one error line from ctsr, the last of its lines."""
    err = capsys.readouterr().err
    assert "Traceback" not in err, err[-3000:]
    assert "internal error" not in err, err[-2000:]
    ours = [line for line in err.splitlines() if line.startswith("ctsr")]
    errors = [line for line in ours if ": error: " in line]
    assert len(errors) == 1 and ours[-1] == errors[0], err[-2000:]
    for text in texts:
        assert text in errors[0], errors[0]
    return errors[0]


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# -- crafted model files --------------------------------------------------------------------------------------------
def _parts(model_file: Path) -> tuple[dict, dict]:
    from safetensors import safe_open

    with safe_open(str(model_file), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata())  # noqa: SIM118


def _write(path: Path, tensors: dict, meta: dict) -> Path:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=meta)
    return path


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def craft_model_files(model_file: Path, folder: Path) -> dict[str, tuple[Path, str]]:
    """{case: (file, a text its one-line refusal holds)}."""
    tensors, meta = _parts(model_file)
    gen, control = json.loads(meta["generator"]), json.loads(meta["control"])
    a2 = next(k for k in tensors if k.startswith("stage2.") and ".lora_A." in k)
    cases: dict[str, tuple[Path, str]] = {}

    def meta_case(name, text, **entries):
        cases[name] = (_write(folder / f"{name}.safetensors", tensors, {**meta, **entries}), text)

    def tensor_case(name, text, edit):
        t = dict(tensors)
        edit(t)
        cases[name] = (_write(folder / f"{name}.safetensors", t, meta), text)

    meta_case("metadata-10MB", "bytes of metadata", junk="x" * 10_000_000)
    meta_case("metadata-just-over-1MB", "above the 1000000 bytes", junk="x" * 1_000_001)
    meta_case("nested-100000", "nested more than 8", generator=json.dumps(gen)[:-1] + ', "x": ' + _nested(100_000) + "}")
    meta_case("nested-20", "nested more than 8", selected_t=json.dumps({"t": 0.5, "x": json.loads(_nested(20))}))
    meta_case("not-json", "not valid JSON", control="{rank: 4")
    meta_case("json-list", "must be a JSON object", generator="[1, 2]")
    meta_case("unknown-key", "unknown key 'bogus'", generator=json.dumps({**gen, "bogus": 1}))
    meta_case("unknown-control-key", "unknown key 'evil'", control=json.dumps({**control, "evil": "x"}))
    meta_case("pretrained-int", "'pretrained' must be", generator=json.dumps({**gen, "pretrained": 5}))
    meta_case("pretrained-empty", "'pretrained' must be", generator=json.dumps({**gen, "pretrained": ""}))
    meta_case("pretrained-nul", "'pretrained' must be", generator=json.dumps({**gen, "pretrained": "a\x00b"}))
    meta_case("pretrained-unknown", "--pretrained", generator=json.dumps({**gen, "pretrained": "nobody/nothing"}))
    meta_case("rank-string", "'lora_rank' must be an integer", generator=json.dumps({**gen, "lora_rank": "4"}))
    meta_case("rank-bool", "'lora_rank' must be an integer", generator=json.dumps({**gen, "lora_rank": True}))
    meta_case("lora-rank-1e9", "LoRA tensors have rank 4", generator=json.dumps({**gen, "lora_rank": 10**9}))
    meta_case("vae-rank-1e8", "LoRA tensors have rank 4", generator=json.dumps({**gen, "vae_lora_rank": 10**8}))
    meta_case("control-rank-1e9", "LoRA tensors have rank 4", control=json.dumps({**control, "rank": 10**9}))
    meta_case("control-rank-0", "'rank' must be an integer ≥ 1", control=json.dumps({**control, "rank": 0}))
    meta_case("control-steps-1e12", "'control_steps' must be an integer in [1, 1000]",
              control=json.dumps({**control, "control_steps": 10**12}))
    meta_case("tau-nan", "'tau_max' must be a number", control=json.dumps({**control, "tau_max": float("nan")}))
    meta_case("selected-t-5", "'t' in [0, 1]", selected_t=json.dumps({"t": 5}))
    meta_case("selected-t-bool", "'t' in [0, 1]", selected_t=json.dumps({"t": True}))
    meta_case("format", "not a CTSR model file", format="x" * 5000)
    tensor_case("tensor-complex", "complex64, not a float16", lambda t: t.update({a2: t[a2].to(torch.complex64)}))
    tensor_case("tensor-int8", "int8, not a float16", lambda t: t.update({a2: t[a2].to(torch.int8)}))
    tensor_case("tensor-float8", "float8_e4m3fn", lambda t: t.update({a2: t[a2].to(torch.float8_e4m3fn)}))
    tensor_case("tensor-nan", "non-finite", lambda t: t.update({a2: torch.full_like(t[a2], float("nan"))}))
    tensor_case("tensor-huge-shape", "has shape", lambda t: t.update({a2: torch.zeros(4, 100_000)}))
    tensor_case("tensor-extra", "do not fit", lambda t: t.update({"stage2.unet.bogus.weight": torch.zeros(3)}))
    # not model files at all, or broken at the byte level
    (folder / "header-2e63.safetensors").write_bytes(struct.pack("<Q", 2**63) + b"{}")
    cases["header-2e63"] = (folder / "header-2e63.safetensors", "safetensors file")
    (folder / "random.safetensors").write_bytes(os.urandom(2048))
    cases["random-bytes"] = (folder / "random.safetensors", "safetensors file")
    (folder / "readme.ckpt").write_text("# ctsr\nA README, not a model.\n")
    cases["text-as-ckpt"] = (folder / "readme.ckpt", "not a PyTorch checkpoint but a text file")
    Image.new("RGB", (8, 8)).save(folder / "image.ckpt", format="PNG")
    cases["png-as-ckpt"] = (folder / "image.ckpt", "not a PyTorch checkpoint but a PNG image")
    # a Lightning checkpoint whose stored generator config asks for a 10⁹ rank or holds an unknown key
    stage1 = {k[len("stage1."):]: v for k, v in tensors.items() if k.startswith("stage1.")}
    state = {f"model.generator.unet.{k[len('stage2.unet.'):]}": v for k, v in tensors.items()
             if k.startswith("stage2.unet.")}
    for name, cfg, text in (("ckpt-rank-1e9", {**gen, "lora_rank": 10**9}, "LoRA tensors have rank 4"),
                            ("ckpt-unknown-key", {**gen, "bogus": [1]}, "unknown key 'bogus'"),
                            ("ckpt-config-list", [1, 2], "must be a mapping")):
        path = folder / f"{name}.ckpt"
        torch.save({"state_dict": state, "ctsr_stage1_lora": stage1, "ctsr_generator_config": cfg,
                    "ctsr_control": {k: v for k, v in control.items() if k != "rank"}, "global_step": 1,
                    "pytorch-lightning_version": "2.5.0"}, path)
        cases[name] = (path, text)
    return cases


# what only building the network finds (the base model's layers): `ctsr push` copies such a file, every loader
# refuses it
NEEDS_THE_NETWORK = {"pretrained-unknown", "tensor-huge-shape", "tensor-extra"}


@pytest.fixture(scope="module")
def crafted(tiny_model_file, tmp_path_factory):
    return craft_model_files(tiny_model_file(), tmp_path_factory.mktemp("crafted"))


def test_every_crafted_model_file_is_one_line_in_every_command(crafted, tmp_path, capsys):
    from ctsr.errors import CTSRError
    from ctsr.models.hub import load_pretrained

    Image.new("RGB", (16, 16), (120, 30, 200)).save(tmp_path / "in.png")
    before = listing(tmp_path)
    for case, (path, text) in crafted.items():
        commands = {
            "upscale": ["upscale", str(tmp_path / "in.png"), str(tmp_path / "out.png"), "--ckpt", str(path)],
            "export": ["export", str(path), str(tmp_path / "out.safetensors")],
            "push": ["push", str(path), "owner/name", "--out", str(tmp_path / "pushed")],
        }
        for command, argv in commands.items():
            if command == "push" and case in NEEDS_THE_NETWORK:
                assert main(argv) == 0, case  # push checks a file without building its network (no base model)
                shutil.rmtree(tmp_path / "pushed")
                capsys.readouterr()
                continue
            assert main(argv) == 2, (case, command)
            one_line(capsys, text)
            assert listing(tmp_path) == before, (case, command)  # no output, no folder, no temporary file
        folder = tmp_path / "hub"  # the hub loader on a CTSR folder holding the file
        folder.mkdir()
        (folder / "ctsr.safetensors").symlink_to(path)
        with pytest.raises(CTSRError):
            load_pretrained(folder)
        (folder / "ctsr.safetensors").unlink()
        folder.rmdir()
    # the demo and `ctsr test` (slower to start) on a few of them
    for case in ("nested-100000", "lora-rank-1e9", "tensor-complex", "text-as-ckpt"):
        path, text = crafted[case]
        assert main(["demo", "--ckpt", str(path), "--device", "cpu"]) == 2, case
        one_line(capsys, text)


def test_crafted_model_files_in_ctsr_test_leave_no_run_folder(crafted, sample_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "eval.yaml").write_text(f"""
trainer:
  accelerator: cpu
  precision: 32-true
  enable_progress_bar: false
  callbacks:
    - class_path: ctsr.callbacks.t_sweep.TSweepEvaluation
      init_args: {{metrics: [psnr], metric_weights: random, num_images: 1}}
data:
  init_args: {{test_pairs: null, test_dirs: [{sample_dir / 'val'}], val_crop_size: 64, num_workers: 0}}
""")
    plain = tmp_path / "plain.ckpt"
    torch.save({"state_dict": {}, "global_step": 1}, plain)  # a weights file, not a Lightning checkpoint
    crafted = {**crafted, "not-lightning": (plain, "not a Lightning checkpoint")}
    for case in ("metadata-10MB", "control-rank-1e9", "selected-t-5", "ckpt-rank-1e9", "not-lightning"):
        path, text = crafted[case]
        flag = "--ckpt_path" if path.suffix == ".ckpt" else "--model.init_args.model_path"
        argv = ["test", "--config", str(ROOT / "experiments" / "eval.yaml"), "--config", "eval.yaml", flag, str(path)]
        assert main(argv) == 2, case
        one_line(capsys, text)
        assert not (tmp_path / "runs").exists(), case  # failed before its first batch: no run folder left


def test_metadata_limits_are_checked_before_parsing(tiny_model_file, tmp_path):
    """The limits docs/reliability.md states: 1 000 000 bytes of metadata, nesting depth 8 — exactly at them a file
    is read; above them it is refused."""
    from ctsr.checkpoints import MAX_METADATA_BYTES, MAX_METADATA_DEPTH, json_meta, safetensors_metadata
    from ctsr.errors import ConfigError

    tensors, meta = _parts(tiny_model_file())
    room = MAX_METADATA_BYTES - sum(len(k) + len(v) for k, v in meta.items()) - len("pad")
    at = _write(tmp_path / "at.safetensors", tensors, {**meta, "pad": "x" * room})
    assert safetensors_metadata(at)["pad"] == "x" * room
    over = _write(tmp_path / "over.safetensors", tensors, {**meta, "pad": "x" * (room + 1)})
    with pytest.raises(ConfigError, match="bytes of metadata"):
        safetensors_metadata(over)
    at_depth = {"a": json.loads(_nested(MAX_METADATA_DEPTH - 1))}  # the object and 7 lists: depth 8
    assert json_meta({"k": json.dumps(at_depth)}, "k", "f") == at_depth
    with pytest.raises(ConfigError, match="nested more than 8"):
        json_meta({"k": json.dumps({"a": json.loads(_nested(MAX_METADATA_DEPTH))})}, "k", "f")


def test_lora_ranks_are_bounded_by_the_layers(tiny_generator):
    from ctsr.errors import ConfigError
    from ctsr.models.generator import OneStepGenerator
    from ctsr.models.lora import UNET_TARGETS, add_lora, max_lora_rank

    widest = max_lora_rank(tiny_generator.unet)
    assert 32 <= widest <= 512
    with pytest.raises(ConfigError, match=f"must be an integer in \\[1, {widest}\\]"):
        add_lora(tiny_generator.unet, 10**9, UNET_TARGETS, "huge")  # refused before peft allocates anything
    with pytest.raises(ConfigError, match="LoRA rank"):
        OneStepGenerator("tiny", lora_rank=widest + 1)


# -- images ---------------------------------------------------------------------------------------------------------
def _bomb(path: Path, side: int) -> Path:
    """A small PNG whose header declares side × side grey pixels (zeros compress to almost nothing)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    raw = zlib.compressobj(9)
    row = b"\x00" * (side + 1)
    data = b"".join(raw.compress(row) for _ in range(side)) + raw.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", data) + chunk(b"IEND", b""))
    return path


def hostile_images(folder: Path) -> tuple[list[str], list[str]]:
    """(files any command reads, files it must refuse), written into ``folder``."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)

    def rgb(h, w):
        return Image.fromarray((rng.random((h, w, 3)) * 255).astype("uint8"))

    rgb(1, 1).save(folder / "px1.png")
    rgb(1, 100).save(folder / "row.png")
    rgb(3, 3).save(folder / "px3.bmp")
    rgb(20, 20).convert("CMYK").save(folder / "cmyk.jpg")
    Image.fromarray((rng.random((20, 20)) * 65535).astype("uint16")).save(folder / "i16.png")
    rgb(20, 20).convert("1").save(folder / "bw.png")
    rgb(20, 20).convert("LA").save(folder / "la.png")
    rgb(20, 20).convert("P").save(folder / "p.png")
    Image.fromarray(np.full((20, 20), np.nan, dtype="float32")).save(folder / "float-nan.tif")
    rgb(20, 20).save(folder / "multi.tiff", save_all=True, append_images=[rgb(20, 20)])
    im = rgb(20, 30)
    exif = im.getexif()
    exif[0x0112] = 6
    im.save(folder / "exif6.jpg", exif=exif)
    Image.fromarray((rng.random((20, 20, 4)) * 255).astype("uint8"), "RGBA").save(folder / "rgba.webp")
    good = sorted(p.name for p in folder.iterdir())
    buf = io.BytesIO()
    rgb(64, 64).save(buf, "PNG")
    (folder / "truncated.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    buf = io.BytesIO()
    rgb(64, 64).save(buf, "JPEG")
    (folder / "truncated-jpeg.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (folder / "empty.png").write_bytes(b"")
    (folder / "text.png").write_text("not an image")
    _bomb(folder / "bomb-100MP.png", 10_000)  # above MAX_PIXELS (89.5 MP): refused from the header
    _bomb(folder / "bomb-400MP.png", 20_000)  # above PIL's own error limit too
    bad = sorted({p.name for p in folder.iterdir()} - set(good))
    return good, bad


def test_hostile_images_in_upscale_score_and_the_reader(tiny_model_file, tmp_path, capsys):
    from ctsr.data.images import MAX_PIXELS, UnreadableImage, read_image

    good, bad = hostile_images(tmp_path / "in")
    for name in bad:  # refused by the reader, each with its reason; a bomb from its header (no pixel decoded)
        with pytest.raises(UnreadableImage) as info:
            read_image(tmp_path / "in" / name)
        if name.startswith("bomb"):
            assert f"above the {MAX_PIXELS:,}" in info.value.reason
    assert not torch.isnan(read_image(tmp_path / "in" / "float-nan.tif")).any()
    # upscale: every readable image written, every other one named in the summary, exit 1, nothing partial
    assert main(["upscale", str(tmp_path / "in"), str(tmp_path / "out"), "--ckpt", str(tiny_model_file()),
                 "--format", "keep"]) == 1
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "internal error" not in captured.err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == good
    summary = captured.out.strip().splitlines()[-1]
    assert f"{len(good)} of {len(good) + len(bad)} image(s) upscaled" in summary and f"{len(bad)} failed" in summary
    for name in bad:
        assert name in captured.err  # "ctsr upscale: skipped …" per file
    # score: images too small for a metric are skipped for it in one warning line; an unreadable one is one error
    sr = tmp_path / "sr"
    sr.mkdir()
    for name in ("px1.png", "row.png", "la.png", "i16.png"):
        (sr / name).write_bytes((tmp_path / "in" / name).read_bytes())
    assert main(["score", str(sr), str(sr), "--metrics", "psnr", "ssim", "lpips", "niqe", "--metric-weights",
                 "random", "--out", str(tmp_path / "table")]) == 0
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if line.startswith("ctsr score: warning:")]
    assert len(warnings) == 1 and "ssim needs 11×11" in warnings[0] and "niqe needs 96×96: 4 of 4" in warnings[0]
    table = json.loads((tmp_path / "table" / "metrics.json").read_text())
    assert "lpips needs 31×31: 4 of 4 skipped" in warnings[0]
    assert set(table["rows"][0]["values"]) == {"psnr", "ssim"}  # no LPIPS, NIQE column: no image they could score
    (sr / "truncated.png").write_bytes((tmp_path / "in" / "truncated.png").read_bytes())
    (tmp_path / "table2").mkdir()
    assert main(["score", str(sr), "--metrics", "niqe", "--metric-weights", "random", "--out",
                 str(tmp_path / "table2")]) == 2
    one_line(capsys, "truncated.png")
    assert listing(tmp_path / "table2") == []


# -- names ----------------------------------------------------------------------------------------------------------
ODD = os.fsdecode(b"d\xe9j\xe0 vu -\xff")  # a space, bytes that are not UTF-8, a dash


def test_odd_names_in_upscale_export_and_score(tiny_model_file, sample_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    src = tmp_path / f"in {ODD}"
    src.mkdir()
    photo = src / os.fsdecode(b"-photo\xfe.png")
    Image.open(sample_dir / "val" / "motorcycle_left.png").crop((0, 0, 32, 24)).save(photo)
    model = tmp_path / f"{ODD}.safetensors"
    model.write_bytes(Path(tiny_model_file()).read_bytes())
    out = tmp_path / f"out {ODD}"
    assert main(["upscale", str(src), str(out), "--ckpt", str(model), "--t", "0", "0.5"]) == 0
    assert {p.name for p in out.iterdir()} == {os.fsdecode(b"-photo\xfe_t0.png"), os.fsdecode(b"-photo\xfe_t0.5.png")}
    capsys.readouterr()
    # a file name that starts with '-': one line saying how to write it; with `--` or ./ it works
    dashed = photo.name
    monkeypatch.chdir(src)
    assert main(["upscale", dashed, "x.png", "--ckpt", str(model)]) == 2
    one_line(capsys, "starts with '-'", "./")
    assert main(["upscale", "--ckpt", str(model), "--", dashed, str(tmp_path / "one.png")]) == 0
    assert main(["upscale", f"./{dashed}", str(tmp_path / "two.png"), "--ckpt", str(model)]) == 0
    monkeypatch.chdir(tmp_path)
    # export to an odd name; score the upscale outputs of one t against HR images named as the inputs
    exported = tmp_path / f"-{ODD} copy.safetensors"
    assert main(["export", str(model), "--", str(exported)]) == 0
    hr = tmp_path / f"hr {ODD}"
    hr.mkdir()
    Image.open(out / os.fsdecode(b"-photo\xfe_t0.png")).save(hr / photo.name)
    capsys.readouterr()
    assert main(["score", str(out), str(hr), "--t", "0.5", "--metrics", "psnr", "--out", str(tmp_path / f"t {ODD}"),
                 "--name", "x"]) == 0
    err = capsys.readouterr().err
    assert "paired 1 SR/HR image(s) SR suffix '_t0.5' removed" in err
    assert (tmp_path / f"t {ODD}" / "metrics.md").is_file()


def test_odd_folder_and_file_names_train_through_ctsr_fit(sample_dir, tmp_path, monkeypatch, capsys):
    """The data folders of `ctsr fit` may hold spaces and bytes that are not UTF-8 (they travel through the YAML
    config and the saved config.yaml as private-use stand-ins); unreadable files and bombs among them are skipped
    when drawn. The run folder itself must be UTF-8 (TensorBoard): one line otherwise."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "experiments").symlink_to(ROOT / "experiments")
    train, val = tmp_path / f"train {ODD}", tmp_path / f"val {ODD}"
    train.mkdir()
    val.mkdir()
    for i, p in enumerate(sorted((sample_dir / "train").iterdir())):
        (train / os.fsdecode(b"im\xe9 %d.png" % i)).write_bytes(p.read_bytes())
    (train / "broken.png").write_bytes(b"not a png")
    _bomb(train / "bomb.png", 10_000)
    for i, p in enumerate(sorted((sample_dir / "val").iterdir())):
        (val / os.fsdecode(b"v\xff%d.png" % i)).write_bytes(p.read_bytes())
    argv = ["fit", "--config", "experiments/tiny_stage1.yaml", "--trainer.logger.init_args.save_dir", "runs",
            "--trainer.logger.init_args.name", ODD, "--data.init_args.train_dirs", f'["{train}"]',
            "--data.init_args.val_dirs", f'["{val}"]']  # as a shell passes them: the raw bytes
    # TensorBoard writes only to UTF-8 paths: a run folder with other bytes is one line, before anything is made
    assert main(argv) == 2
    one_line(capsys, "not UTF-8", "TensorBoard")
    assert not (tmp_path / "runs").exists()
    argv[argv.index(ODD)] = "odd data"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(argv) == 0, capsys.readouterr().err[-3000:]
    skipped = [str(w.message) for w in caught if "skipped training image" in str(w.message)]
    assert skipped and all("broken.png" in m or "bomb.png" in m for m in skipped), skipped
    for message in map(str, (w.message for w in caught)):  # text that prints and pickles (pytest-xdist sends it)
        message.encode("utf-8")
    run = tmp_path / "runs" / "odd data"
    assert (run / "checkpoints" / "last.ckpt").is_file() and (run / "metrics.md").is_file()
    import yaml

    saved = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))  # UTF-8 text, stand-ins for the bytes
    assert Path(saved["data"]["init_args"]["train_dirs"][0]).name.startswith("train d")  # (YAML may fold long lines)
    assert "Traceback" not in capsys.readouterr().err
    # a resume reads the saved config.yaml back: the same folders, no "changed settings"
    assert main(argv + ["--ckpt_path", "last", "--trainer.max_steps", "6"]) == 0, capsys.readouterr().err[-3000:]


def test_fit_before_the_sample_photos_exist_says_make_samples_and_leaves_no_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "experiments").symlink_to(ROOT / "experiments")
    assert main(["fit", "--config", "experiments/tiny_stage1.yaml"]) == 2
    one_line(capsys, "data/samples/train", "make samples")
    assert listing(tmp_path) == ["experiments"]  # no runs/tiny/ctsr-stage1 left behind
    # the quick start (the mini world) in a folder without its photos (or its shipped weights): one line, no run
    assert main(["fit", "--config", "experiments/quickstart.yaml"]) == 2
    one_line(capsys, "make")
    assert listing(tmp_path) == ["experiments"]


def test_command_lines_that_do_not_parse_are_one_line(capsys):
    for argv, text in ((["upscale"], "required: input, output"), (["score", "--bogus"], "--bogus"),
                       (["fit", "--trainer.bogus", "1"], "--trainer.bogus"), (["bogus"], "unknown command 'bogus'"),
                       (["fit", "--config", "missing.yaml"], "missing.yaml"), (["export", "-m.ckpt", "o"], "./-m.ckpt")):
        assert main(argv) == 2, argv
        one_line(capsys, text)
    with pytest.raises(SystemExit) as info:  # --help still prints the usage
        main(["--help"])
    assert info.value.code in (0, None) and "upscale" in capsys.readouterr().out


def test_a_real_process_with_undecodable_arguments(tiny_model_file, tmp_path):
    """The command as a shell runs it: arguments as raw bytes (not UTF-8), stderr as a terminal shows it."""
    folder = Path(os.fsdecode(os.fsencode(tmp_path) + b"/caf\xe9 \xff"))
    folder.mkdir()
    Image.new("RGB", (12, 12), (10, 200, 30)).save(folder / "a.png")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-m", "ctsr.cli", "upscale", os.fsencode(folder), os.fsencode(folder) + b"-out",
            "--ckpt", str(tiny_model_file())]
    done = subprocess.run(args, env=env, capture_output=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (Path(os.fsdecode(os.fsencode(folder) + b"-out")) / "a.png").is_file()
    bad = subprocess.run(args[:-1] + [str(folder / "a.png"), "--overwrite"], env=env, capture_output=True,
                         timeout=300, check=False)
    assert bad.returncode == 2 and b"Traceback" not in bad.stderr
    assert b"not a PyTorch checkpoint but a PNG image" in bad.stderr.splitlines()[-1]


def test_an_unexpected_error_is_one_line_and_ctrl_c_is_130(monkeypatch, capsys):
    """Whatever ctsr did not foresee is still one line (a bug to report, exit 70; the traceback on request), and
    Ctrl-C outside training is 130 without a traceback."""
    from ctsr.cli import score

    def broken(argv):
        raise RuntimeError("something ctsr did not expect\nsecond line")

    monkeypatch.setattr(score, "main", broken)
    assert main(["score", "x", "--out", "y"]) == 70
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().splitlines() == [
        ("ctsr: internal error: RuntimeError: something ctsr did not expect. This is a bug in ctsr, not in your "
         "input: run again with CTSR_TRACEBACK=1 and report the traceback")]
    monkeypatch.setenv("CTSR_TRACEBACK", "1")
    with pytest.raises(RuntimeError):
        main(["score", "x", "--out", "y"])
    monkeypatch.delenv("CTSR_TRACEBACK")

    def interrupted(argv):
        raise KeyboardInterrupt

    monkeypatch.setattr(score, "main", interrupted)
    assert main(["score", "x", "--out", "y"]) == 130
    assert capsys.readouterr().err.strip() == "ctsr: interrupted: Ctrl-C"


def test_crafted_metrics_tables_are_one_line(tiny_model_file, tmp_path, capsys):
    """A metrics.json that ctsr did not write (select-t reads it; `ctsr score --out` merges into it): one line naming
    it, nothing rewritten."""
    model = tmp_path / "m.safetensors"
    model.write_bytes(Path(tiny_model_file()).read_bytes())
    sr = tmp_path / "sr"
    sr.mkdir()
    Image.new("RGB", (16, 16), (3, 4, 5)).save(sr / "a.png")
    rows = '{"method": "CTSR", "t": %s, "values": {"psnr": %s}}'
    for case, text in (("t-text", '{"rows": [%s, %s], "settings": {}}' % (rows % ('"a"', 1), rows % (0.5, 2))),
                       ("value-text", '{"rows": [%s, %s], "settings": {}}' % (rows % (0, '"x"'), rows % (1, 2))),
                       ("t-nan", '{"rows": [%s, %s], "settings": {}}' % (rows % ("NaN", 1), rows % (1, 2))),
                       ("list", "[1, 2]"), ("nested", '{"rows": ' + _nested(100_000) + "}")):
        folder = tmp_path / case
        folder.mkdir()
        (folder / "metrics.json").write_text(text)
        assert main(["select-t", str(folder), "--model", str(model)]) == 2, case
        one_line(capsys, "is not a metrics record written by ctsr")
        assert main(["score", str(sr), "--metrics", "niqe", "--metric-weights", "random", "--out", str(folder)]) == 2
        one_line(capsys, "is not a metrics record written by ctsr")
        assert sorted(p.name for p in folder.iterdir()) == ["metrics.json"]
        assert (folder / "metrics.json").read_text() == text
    assert model.read_bytes() == Path(tiny_model_file()).read_bytes()
