"""The low-light task (``task: lle``, Table 9): scale-1 generator, paired data at the same size, LOL-v2's layout and
pair lists, synthetic darkening, the stand-in teachers, GSAD's scoring protocol, and `make table9` on tiny models."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from ctsr.errors import ConfigError, DataError

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]


# -- the generator at scale 1 ----------------------------------------------------------------------------------------
def test_scale_one_generator_keeps_the_size_and_old_files_stay_x4():
    from ctsr.inference.tiling import lr_multiple, unet_alignment
    from ctsr.models.generator import OneStepGenerator

    gen = OneStepGenerator("tiny", seed=0, scale=1).eval()
    x = torch.rand(2, 3, 32, 48, generator=torch.Generator().manual_seed(0))
    assert torch.equal(gen.upsample(x), x)
    with torch.no_grad():
        out, z0 = gen(x)
    assert out.shape == x.shape and z0.shape[-2:] == (4, 6)
    assert OneStepGenerator.complete_config({"pretrained": "tiny"})["scale"] == 4  # files from before the option
    assert OneStepGenerator.from_config(gen.config).scale == 1
    with pytest.raises(ConfigError, match="scale"):
        OneStepGenerator("tiny", scale=3)
    align = unet_alignment(gen.unet)
    assert lr_multiple(gen.unet) == max(8, 2 * align)  # ×4: as before
    assert lr_multiple(gen.unet, 1) == 8 * align        # the latent is LR/8


def test_upscaler_and_t_sweep_at_scale_one(tiny_controllable):
    from ctsr.callbacks.t_sweep import sweep_images
    from ctsr.inference.upscale import Upscaler
    from ctsr.models.control import ControllableSR
    from ctsr.models.generator import OneStepGenerator

    torch.manual_seed(0)
    gen = OneStepGenerator("tiny", scale=1)
    model = ControllableSR.from_stage1(gen, {n: p.detach().clone() for n, p in gen.named_parameters()
                                             if p.requires_grad})
    x = torch.rand(1, 3, 37, 29)
    outs = sweep_images(SimpleNamespace(model=model), x, [0.0, 1.0])
    assert all(o.shape == x.shape for o in outs.values())
    up = Upscaler(model, "cpu", color="adain", tile=0)
    assert up(x, [0.0])[0].shape == x.shape


# -- data ------------------------------------------------------------------------------------------------------------
def test_synthetic_darkening_is_darker_8bit_and_seeded_per_image():
    from ctsr.data.lowlight import SyntheticDarkening

    dark = SyntheticDarkening()
    hr = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 0.5 + 0.5
    low = dark(hr, seeds=[1, 2, 3])
    assert low.shape == hr.shape and (low.mean(dim=(1, 2, 3)) < 0.5 * hr.mean(dim=(1, 2, 3))).all()
    assert torch.equal(low, (low * 255).round() / 255)
    assert torch.equal(dark(hr[1:2], seeds=[2]), low[1:2])  # independent of the batch
    a = dark(hr, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, dark(hr, generator=torch.Generator().manual_seed(5)))


def _lolv2(root: Path, names: list[str], split: str = "Train") -> None:
    from ctsr.data.images import write_image

    g = torch.Generator().manual_seed(len(names))
    for name in names:
        normal = torch.rand(3, 40, 48, generator=g)
        for sub, img in (("Normal", normal), ("Low", normal * 0.25)):
            (root / "Synthetic" / split / sub).mkdir(parents=True, exist_ok=True)
            write_image(img, root / "Synthetic" / split / sub / name)


def test_lolv2_pair_lists_and_paired_training_at_scale_one(tmp_path):
    from ctsr.data.datamodule import SRDataModule
    from ctsr.data.datasets import PairedTrainDataset, read_pair_list

    root = tmp_path / "LOL-v2"
    _lolv2(root, ["r01.png", "r02.png", "r03.png"])
    _lolv2(root, ["r09.png"], "Test")
    script = [sys.executable, str(ROOT / "data" / "lolv2_meta.py"), "--root", str(root), "--out", str(tmp_path)]
    refused = subprocess.run(script, capture_output=True, text=True)
    assert refused.returncode != 0 and "900" in refused.stderr  # the real set's counts are checked
    assert subprocess.run(script + ["--any-count"], capture_output=True, text=True).returncode == 0
    pairs = read_pair_list(tmp_path / "lolv2_syn_train.txt")
    assert [(a.parent.name, b.parent.name, a.name == b.name) for a, b in pairs] == [("Low", "Normal", True)] * 3

    data = PairedTrainDataset(pairs, crop_size=32, scale=1, seed=0)
    item = data[(0, 1)]
    assert item["lr"].shape == item["hr"].shape == (3, 32, 32)
    # the same crop and flip on both sides: low = normal / 4 up to 8-bit rounding
    assert (item["lr"] - item["hr"] * 0.25).abs().max() <= 1 / 255
    assert torch.equal(data[(0, 1)]["hr"], item["hr"]) and not torch.equal(data[(1, 1)]["hr"], item["hr"])

    dm = SRDataModule(task="lle", train_pair_meta=[str(tmp_path / "lolv2_syn_train.txt")],
                      test_pair_meta=[str(tmp_path / "lolv2_syn_test.txt")], crop_size=32, val_crop_size=None,
                      batch_size=2, num_workers=0)
    dm.setup("fit")
    batch = dm.on_after_batch_transfer(next(iter(dm.train_dataloader())), 0)
    assert batch["lr"].shape == batch["hr"].shape == (2, 3, 32, 32)  # paired: no synthetic degradation
    dm.setup("test")
    test = next(iter(dm.test_dataloader()))
    assert test["lr"].shape == test["hr"].shape == (1, 3, 40, 48)


def test_task_and_model_scale_must_agree():
    from ctsr.data.datamodule import SRDataModule
    from ctsr.data.lowlight import SyntheticDarkening

    dm = SRDataModule(task="lle", train_dirs=["x"], num_workers=0)
    assert isinstance(dm.degradation, SyntheticDarkening) and dm.scale == 1
    dm.trainer = SimpleNamespace(lightning_module=SimpleNamespace(generator=SimpleNamespace(scale=4)))
    with pytest.raises(ConfigError, match="data.task.*scale: 1"):
        dm.setup("fit")
    with pytest.raises(ConfigError, match="data.train_pairs"):
        SRDataModule(task="lle", train_dirs=["x"], train_pairs=[["a", "b"]])


def test_paired_sets_check_the_scale(tmp_path):
    from ctsr.data.datasets import PairedDataset
    from ctsr.data.images import write_image

    for sub, size in (("lr", 16), ("hr", 64)):
        (tmp_path / sub).mkdir()
        write_image(torch.rand(3, size, size), tmp_path / sub / "a.png")
    assert PairedDataset(str(tmp_path / "lr"), str(tmp_path / "hr"))[0]["hr"].shape == (3, 64, 64)
    with pytest.raises(DataError, match="not the size of"):
        PairedDataset(str(tmp_path / "lr"), str(tmp_path / "hr"), scale=1)[0]


# -- the stand-in teachers ---------------------------------------------------------------------------------------------
def test_classical_enhancers():
    from ctsr.models.lowlight import LUMA, GammaBrighten
    from ctsr.models.teachers import AnchoredTeacher, load_sr_model

    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 0.2
    y = GammaBrighten(target=0.45)(x)
    luma = (x * torch.tensor(LUMA).view(1, 3, 1, 1)).sum(1).mean(dim=(1, 2))
    gamma = torch.log(torch.tensor(0.45)) / torch.log(luma)
    torch.testing.assert_close(y, x.clamp_min(1e-3).pow(gamma.view(-1, 1, 1, 1)))  # the formula
    assert (y.mean(dim=(1, 2, 3)) > x.mean(dim=(1, 2, 3))).all()
    dark = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 0.2
    eq = load_sr_model("equalize", scale=1)(dark)  # PIL's equalize (kornia): a no-op on tiny images, as PIL's
    assert eq.shape == dark.shape and eq.amax() > 0.9  # the histogram is stretched to the full range
    with pytest.raises(ConfigError, match="scale: 1"):
        load_sr_model("gamma", scale=4)
    assert AnchoredTeacher("identity", scale=1).upscale(x).shape == x.shape


# -- GSAD's scoring protocol ----------------------------------------------------------------------------------------
def test_gsad_protocol_against_a_hand_computation():
    from skimage.metrics import structural_similarity

    from ctsr.evaluation.lowlight import LowLightScores, gt_mean_adjust, prepare_pair, psnr_u8

    g = torch.Generator().manual_seed(0)
    gt = (torch.rand(3, 24, 24, generator=g) * 255).round() / 255
    out = (gt * 0.6 + 0.05 * torch.rand(3, 24, 24, generator=g)).clamp(0, 1)
    out_u8 = np.clip((out.numpy().transpose(1, 2, 0) * 255).round(), 0, 255).astype(np.uint8)
    gt_u8 = (gt.numpy().transpose(1, 2, 0) * 255).round().astype(np.uint8)
    # by hand: gray = 0.299 R + 0.587 G + 0.114 B, ratio of the means, clip, truncate to 8 bits
    gray = lambda a: (0.299 * a[..., 0] + 0.587 * a[..., 1] + 0.114 * a[..., 2]).mean()  # noqa: E731
    ratio = gray(gt_u8 / 255.0) / gray(out_u8 / 255.0)
    expected = (np.clip(out_u8 / 255.0 * ratio, 0, 1) * 255).astype(np.uint8)
    adjusted, target = gt_mean_adjust(out_u8, gt_u8)
    assert np.abs(adjusted.astype(int) - expected.astype(int)).max() <= 1  # float32 means, as OpenCV's
    assert np.abs(target.astype(int) - gt_u8.astype(int)).max() <= 1
    a, b = prepare_pair(out, gt, "gsad")
    mse = ((a.astype(float) - b.astype(float)) ** 2).mean()
    assert psnr_u8(a, b) == pytest.approx(10 * np.log10(255 ** 2 / mse))
    scores = LowLightScores("gsad")
    scores.update(out[None], gt[None])
    result = scores.compute()
    assert result["ssim"] == pytest.approx(structural_similarity(a, b, channel_axis=-1, data_range=255))
    plain = LowLightScores("plain")
    plain.update(out[None], gt[None])
    assert plain.compute()["psnr"] < result["psnr"]  # the brightness matching is what GSAD's numbers include


# -- make table9 -------------------------------------------------------------------------------------------------------
def test_make_table9_tiny_trains_scores_and_writes_the_paper_format(tmp_path, monkeypatch, sample_dir, capsys):
    from ctsr.experiments import table9

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "samples").symlink_to(sample_dir)
    (tmp_path / "experiments").symlink_to(ROOT / "experiments")
    monkeypatch.chdir(tmp_path)
    assert table9.main(["--size", "tiny", "--dry-run"]) == 0
    assert "experiments/tiny_lle_stage1.yaml" in capsys.readouterr().out
    assert table9.main(["--size", "tiny", "--in-process"]) == 0
    md = (tmp_path / "results" / "table9-tiny.md").read_text()
    assert "| Method | PSNR↑ | SSIM↑ | LPIPS↓ | Parameters (M)↓ |" in md
    rows = (tmp_path / "results" / "table9-tiny.csv").read_text().splitlines()
    assert rows[0] == "method,psnr,ssim,lpips,params_m" and len(rows) == 4
    assert rows[3].startswith("CTSR-LLE (distilled, t = 0),")
    assert (tmp_path / "runs" / "tiny" / "table9" / "lle-stage1" / "done").is_file()
    # a re-run skips the finished training and scores again
    assert table9.main(["--size", "tiny", "--in-process"]) == 0
    assert "skip" in capsys.readouterr().out


def test_the_mini_worlds_low_light_config_parses(capsys):
    import yaml

    from ctsr.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(ROOT / "experiments" / "mini" / "lle_stage1.yaml"), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["data"]["init_args"]["task"] == "lle"
    assert printed["model"]["init_args"]["generator"]["init_args"]["scale"] == 1
