"""``ctsr upscale`` and ``ctsr bench`` on tiny models: files in and out, bad input, the model's maths, colour fixes."""
import re

import numpy as np
import pytest
import torch
from PIL import Image

from ctsr.errors import ConfigError
from ctsr.cli import bench, upscale
from ctsr.inference.color import adain, color_fix, wavelet, wavelet_decomposition
from ctsr.inference.upscale import Upscaler, check_t_values
from ctsr.models.export import Stage1Only, load_model
from ctsr.models.generator import OneStepGenerator


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model_file(tiny_model_file):
    return tiny_model_file(stage1_lora=True)


def _photo(h, w, mode="RGB"):
    from skimage import data

    return Image.fromarray(data.astronaut()).resize((w, h), Image.BICUBIC).convert(mode)


@pytest.fixture()
def photos(tmp_path):
    """A folder with every accepted format, odd sizes, grayscale, RGBA, a sub-folder and one broken file."""
    root = tmp_path / "in"
    (root / "sub").mkdir(parents=True)
    _photo(24, 40).save(root / "a.png")
    _photo(24, 40).save(root / "b.jpg", quality=95)
    _photo(23, 37, "L").save(root / "sub" / "gray.jpg")
    _photo(24, 40, "RGBA").save(root / "rgba.webp", lossless=True)
    _photo(16, 16).save(root / "c.bmp")
    _photo(17, 9).save(root / "d.tiff")
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not an image" * 10)
    return root


def _size(path):
    with Image.open(path) as img:
        return img.size, img.mode


def test_folder_every_t_every_format_bad_files_skipped(model_file, photos, tmp_path, capsys):
    out = tmp_path / "out"
    rc = upscale.main([str(photos), str(out), "--ckpt", str(model_file), "--t", "0", "0.5", "--batch-size", "2",
                       "--device", "cpu"])
    captured = capsys.readouterr()
    assert rc == 1  # one file failed
    assert re.search(r"6 of 7 image\(s\) upscaled, 12 file\(s\) written .*1 failed: .*broken\.png", captured.out)
    assert "skipped" in captured.err and "broken.png" in captured.err
    sizes = {"a": (40, 24), "b": (40, 24), "sub/gray": (37, 23), "rgba": (40, 24), "c": (16, 16), "d": (9, 17)}
    for name, (w, h) in sizes.items():
        for t in ("0", "0.5"):
            assert _size(out / f"{name}_t{t}.png") == ((4 * w, 4 * h), "RGB"), name  # ×4 each side, RGB
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == sorted(
        [f"{n}_t{t}.png" for n in sizes for t in ("0", "0.5")] + ["sub"])
    assert sorted(p.name for p in photos.rglob("*")) == sorted(  # the input folder is untouched
        ["a.png", "b.jpg", "sub", "gray.jpg", "rgba.webp", "c.bmp", "d.tiff", "broken.png"])
    a0, a5 = (np.asarray(Image.open(out / f"a_t{t}.png")) for t in ("0", "0.5"))
    assert np.abs(a0.astype(int) - a5).mean() > 0.5  # t changes the image


def test_existing_outputs_are_kept_unless_overwrite(model_file, photos, tmp_path, capsys):
    out = tmp_path / "out.png"
    out.write_bytes(b"keep me")
    args = [str(photos / "a.png"), str(out), "--ckpt", str(model_file), "--t", "0.3", "--device", "cpu"]
    assert upscale.main(args) == 0
    assert out.read_bytes() == b"keep me" and "nothing to do" in capsys.readouterr().out
    assert upscale.main(args + ["--overwrite"]) == 0
    assert _size(out) == ((160, 96), "RGB")  # one input file, one t: exactly OUTPUT
    assert not list(tmp_path.glob(".*.part"))


def test_keep_format_and_a_folder_output_for_one_file(model_file, photos, tmp_path):
    out = tmp_path / "out"
    args = [str(photos / "b.jpg"), str(out), "--ckpt", str(model_file), "--format", "keep", "--t", "0", "1",
            "--color", "wavelet", "--tile", "8", "--tile-overlap", "4", "--vae-tile", "8", "--vae-overlap", "4",
            "--shared-norms", "none"]
    assert upscale.main(args) == 0
    assert sorted(p.name for p in out.iterdir()) == ["b_t0.jpg", "b_t1.jpg"]
    with Image.open(out / "b_t1.jpg") as img:
        assert img.format == "JPEG" and img.size == (160, 96)


def test_never_writes_into_the_input(model_file, photos, tmp_path):
    base = ["--ckpt", str(model_file)]
    with pytest.raises(ConfigError, match="input folder"):
        upscale.main([str(photos), str(photos), *base])
    with pytest.raises(ConfigError, match="input folder"):
        upscale.main([str(photos), str(photos / "sub" / "sr"), *base])
    with pytest.raises(ConfigError, match="overwrite the input"):
        upscale.main([str(photos / "a.png"), str(photos / "a.png"), *base, "--overwrite"])
    with pytest.raises(ConfigError, match="--t"):
        upscale.main([str(photos / "a.png"), str(tmp_path / "x.png"), *base, "--t", "1.5"])
    with pytest.raises(ConfigError, match="does not exist"):
        upscale.main([str(tmp_path / "nothing"), str(tmp_path / "x"), *base])


def test_a_failing_batch_does_not_end_the_run(model_file, photos, tmp_path, monkeypatch, capsys):
    real = Upscaler.__call__

    def flaky(self, x_lr, ts):
        if x_lr.shape[-1] == 16:  # c.bmp
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 8 GiB")
        return real(self, x_lr, ts)

    monkeypatch.setattr(Upscaler, "__call__", flaky)
    monkeypatch.delenv("CTSR_TRACEBACK", raising=False)
    (photos / "broken.png").unlink()
    rc = upscale.main([str(photos), str(tmp_path / "out"), "--ckpt", str(model_file), "--batch-size", "4"])
    captured = capsys.readouterr()
    assert rc == 1 and "5 of 6 image(s) upscaled" in captured.out and "c.bmp" in captured.out
    assert "lower --batch-size" in captured.err
    assert len(list((tmp_path / "out").rglob("*.png"))) == 5


def test_upscaler_is_the_model(model_file):
    """No colour fix, fp32, no tiles: the upscaler's output is the model's own ``sweep``, any image size."""
    model = load_model(model_file)
    x = torch.rand(2, 3, 24, 40, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model.sweep(x, [0.0, 0.5, 1.0])
    up = Upscaler(model, "cpu", "fp32", color="none", batch_size=1)  # batch 1: the two images go one by one
    got = up(x, [0.0, 0.5, 1.0])
    assert all(torch.allclose(a, b, atol=2e-5) for a, b in zip(expected, got))
    assert up.student_unet is not None and not any("lora" in n for n, _ in model.generator.named_parameters())
    odd = up(torch.rand(1, 3, 23, 37), [0.5])[0]
    assert odd.shape == (1, 3, 92, 148) and 0 <= float(odd.min()) and float(odd.max()) <= 1
    assert odd.dtype == torch.float32


def test_bf16_weights_and_stage1_models(model_file):
    up = Upscaler(load_model(model_file), "cpu", "bf16")
    assert next(up.teacher_unet.parameters()).dtype == torch.bfloat16
    assert next(up.student_unet.parameters()).dtype == torch.bfloat16
    out = up(torch.rand(1, 3, 16, 16), [0.0, 1.0])
    assert all(o.shape == (1, 3, 64, 64) and torch.isfinite(o).all() for o in out)
    stage1 = Stage1Only.from_stage1(OneStepGenerator("tiny")).eval()
    assert check_t_values(stage1, [0, 0.0]) == [0.0]
    with pytest.raises(ConfigError, match="stage-1 model"):
        check_t_values(stage1, [0.0, 0.5])
    assert Upscaler(stage1, "cpu").student_unet is None


def test_tiles_in_bf16_with_shared_and_per_tile_norms(model_file):
    """The shared norms' own arithmetic (float32 statistics, one x·a + b) in a bf16 network over tiles."""
    model, x = load_model(model_file), torch.rand(1, 3, 24, 40, generator=torch.Generator().manual_seed(0))
    tiles = dict(tile=8, tile_overlap=4, vae_tile=8, vae_overlap=4, color="none")
    fp32 = Upscaler(model, "cpu", "fp32", shared_norms="all", **tiles)(x, [0.5])[0]
    shared = Upscaler(model, "cpu", "bf16", shared_norms="all", **tiles)(x, [0.5])[0]
    per_tile = Upscaler(model, "cpu", "bf16", shared_norms="none", **tiles)(x, [0.5])[0]
    assert shared.shape == per_tile.shape == (1, 3, 96, 160) and torch.isfinite(shared).all()
    assert float((shared - fp32).abs().mean()) < 0.02  # bf16 rounding only
    assert float((per_tile - shared).abs().mean()) > 0.02  # the option reaches the tiles


def test_color_fixes():
    g = torch.Generator().manual_seed(0)
    ref = torch.nn.functional.avg_pool2d(torch.rand(2, 3, 68, 68, generator=g), 5, 1)  # (2, 3, 64, 64)
    sr = (ref - 0.5) * 0.6 + 0.3 + 0.05 * torch.randn(ref.shape, generator=g)
    fixed = adain(sr, ref)
    # per image and channel, the reference's mean and std (OSEDiff's adain_color_fix; std with eps 1e-5)
    assert torch.allclose(fixed.mean((2, 3)), ref.mean((2, 3)), atol=1e-3)
    assert torch.allclose(fixed.flatten(2).std(-1), ref.flatten(2).std(-1), atol=2e-3)
    assert torch.allclose(adain(ref * 0.5 + 0.2, ref), ref, atol=1e-3)  # a per-channel affine change is undone
    # wavelet: high + low is the image; a colour shift lives in the low band only, so it is undone exactly
    high, low = wavelet_decomposition(sr)
    assert torch.allclose(high + low, sr, atol=1e-6)
    shift = torch.tensor([0.1, -0.05, 0.02]).reshape(1, 3, 1, 1)
    assert torch.allclose(wavelet(ref + shift, ref), ref, atol=1e-5)
    assert torch.allclose(wavelet(ref, ref), ref, atol=1e-6)
    assert torch.equal(color_fix(sr.clamp(0, 1), ref, "none"), sr.clamp(0, 1))
    with pytest.raises(ValueError, match="color"):
        color_fix(sr, ref, "sepia")


def test_bench_tiny_prints_ratios_and_parameter_counts(capsys):
    assert bench.main(["--size", "tiny", "--device", "cpu", "--no-compile", "--repeats", "1", "--warmup", "0",
                       "--batches", "1", "2", "--large", "128"]) == 0
    out = capsys.readouterr().out
    ratios = re.findall(r"ratio ctsr/bare eager batch (\d) t=([\d.]+): ([\d.]+)", out)
    assert [(b, t) for b, t, _ in ratios] == [("1", "0"), ("1", "0.5"), ("2", "0"), ("2", "0.5")]
    assert all(0 < float(r) < 100 for _, _, r in ratios)
    row = re.search(r"Table 8 row \(this model\): total ([\d.]+) M parameters \(UNet ([\d.]+) \+ VAE ([\d.]+) \+ "
                    r"text encoder ([\d.]+) \+ LoRA ([\d.]+)\); trainable ([\d.]+) M in stage 1.*, "
                    r"([\d.]+) M in stage 2", out)
    total, unet, vae, text, lora, stage1, stage2 = (float(v) for v in row.groups())
    assert abs(total - (unet + vae + text + lora)) < 0.02 and 0 < stage2 <= stage1 < total
    gen = OneStepGenerator("tiny")  # the same counts, independently
    assert abs(unet - sum(p.numel() for n, p in gen.unet.named_parameters() if "lora_" not in n) / 1e6) < 0.006
    assert abs(stage1 - sum(p.numel() for p in gen.trainable_parameters()) / 1e6) < 0.006
    assert re.search(r"large: 128×128 output, t=0.5, batch 1, eager, .*: \d+ ms, peak -", out)
    assert "Paper, CTSR: 1775 / 8.5" in out


def test_the_recorded_t_is_the_default_everywhere(model_file, tmp_path, capsys):
    """`ctsr upscale` without --t, `model(x)` and the Hub loader use the t `ctsr select-t` recorded (printed by the
    command line), and the output is that of --t at that value."""
    from ctsr.evaluation.select_t import record_selection
    from ctsr.models.control import ControllableSR
    from ctsr.models.hub import load_pretrained

    from pathlib import Path

    selected = tmp_path / "folder" / "ctsr.safetensors"
    selected.parent.mkdir()
    selected.write_bytes(Path(model_file).read_bytes())
    record_selection(selected, {"t": 0.6, "rule": "weighted", "split": "val", "metrics": {}})
    _photo(20, 24).save(tmp_path / "in.png")
    assert upscale.main([str(tmp_path / "in.png"), str(tmp_path / "default.png"), "--ckpt", str(selected)]) == 0
    assert "using the model's t = 0.6 (recorded by `ctsr select-t`: rule weighted" in capsys.readouterr().err
    assert upscale.main([str(tmp_path / "in.png"), str(tmp_path / "given.png"), "--ckpt", str(selected),
                         "--t", "0.6"]) == 0
    assert "recorded" not in capsys.readouterr().err  # --t given: nothing to say
    assert np.array_equal(np.asarray(Image.open(tmp_path / "default.png")),
                          np.asarray(Image.open(tmp_path / "given.png")))
    model = ControllableSR.load(selected)
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert model.default_t == 0.6 and torch.equal(model(x), model(x, 0.6))
    assert load_pretrained(selected.parent).default_t == 0.6
    capsys.readouterr()
    assert ControllableSR.from_pretrained(str(selected.parent)).default_t == 0.6
    assert "records t = 0.6 (`ctsr select-t`, rule weighted); model(x) uses it" in capsys.readouterr().err
    assert ControllableSR.load(model_file).default_t == 0.0  # nothing recorded: the realness end, as before


def test_bench_tiny_runs_eager_without_compiling_off_cuda(capsys):
    """`ctsr bench --size tiny --device cpu`, as the README gives it, compiles nothing (compiling on a CPU took
    minutes); --compile adds the compiled rows."""
    assert bench.main(["--size", "tiny", "--device", "cpu", "--repeats", "1", "--warmup", "0", "--batches", "1",
                       "--t", "0"]) == 0
    out = capsys.readouterr().out
    assert "ratio ctsr/bare eager batch 1 t=0:" in out and "compiled" not in out.split("targets")[0]
