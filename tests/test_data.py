"""Image reading and the data module: bad data never stops a run and never goes unnoticed."""
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ctsr.data.datamodule import BicubicDegradation, SRDataModule
from ctsr.data.datasets import HRTrainDataset, PairedDataset, pair_key
from ctsr.data.images import UnreadableImage, list_images, read_image
from ctsr.errors import ConfigError, DataError


def _rgb(h=40, w=60, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_modes_become_rgb_in_unit_range(tmp_path):
    arr = _rgb()
    Image.fromarray(arr).convert("L").save(tmp_path / "gray.png")
    Image.fromarray(arr).convert("P").save(tmp_path / "palette.png")
    rgba = np.dstack([arr, np.full(arr.shape[:2], 0, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(arr[..., 0].astype(np.uint16) * 257).save(tmp_path / "sixteen.png")  # 16-bit gray
    for name in ("gray", "palette", "rgba", "sixteen"):
        x = read_image(tmp_path / f"{name}.png")
        assert x.shape == (3, 40, 60) and x.dtype == torch.float32, name
        assert 0 <= x.min() and x.max() <= 1, name
    assert torch.allclose(read_image(tmp_path / "rgba.png"), torch.ones(3, 40, 60))  # transparent → white
    sixteen = read_image(tmp_path / "sixteen.png")
    assert torch.allclose(sixteen[0], torch.from_numpy(arr[..., 0] / 255.0).float(), atol=1e-4)


def test_exif_rotation_is_applied(tmp_path):
    img = Image.fromarray(_rgb(20, 50))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90° CW on display
    img.save(tmp_path / "rot.jpg", exif=exif.tobytes())
    assert read_image(tmp_path / "rot.jpg").shape == (3, 50, 20)


def test_broken_files_raise_unreadable(tmp_path):
    Image.fromarray(_rgb(64, 64)).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.png").write_text("not an image")
    (tmp_path / "empty.jpg").write_bytes(b"")
    for name in ("truncated.png", "text.png", "empty.jpg"):
        with pytest.raises(UnreadableImage, match=name):
            read_image(tmp_path / name)


def test_training_set_skips_bad_files_and_reports_them(tmp_path):
    Image.fromarray(_rgb(80, 80)).save(tmp_path / "a_good.png")
    (tmp_path / "b_bad.png").write_text("garbage")
    Image.fromarray(_rgb(20, 20)).save(tmp_path / "c_small.png")
    files = list_images(tmp_path)
    pad = HRTrainDataset(files, crop_size=32, small_images="pad")
    items = [pad[i] for i in range(3)]
    assert all(it["hr"].shape == (3, 32, 32) for it in items)
    assert "b_bad.png" in items[1]["skipped"] and items[1]["path"] != str(tmp_path / "b_bad.png")
    skip = HRTrainDataset(files, crop_size=32, small_images="skip")
    assert "smaller than the crop" in skip[2]["skipped"]


def test_all_bad_is_a_clear_error_not_a_hang(tmp_path):
    for i in range(3):
        (tmp_path / f"{i}.png").write_text("x")
    with pytest.raises(DataError, match="in a row"):
        HRTrainDataset(list_images(tmp_path), crop_size=32)[0]


def test_missing_or_empty_folders_fail_at_setup(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="does not exist"):
        SRDataModule(train_dirs=[str(tmp_path / "nope")], crop_size=32).setup("fit")
    with pytest.raises(DataError, match="holds no images"):
        SRDataModule(train_dirs=[str(tmp_path / "empty")], crop_size=32).setup("fit")
    with pytest.raises(ConfigError, match="crop_size"):
        SRDataModule(train_dirs=[str(tmp_path)], crop_size=30)


def test_meta_lists_merge_with_folders(tmp_path, sample_dir):
    meta = tmp_path / "meta.txt"
    meta.write_text(f"# a comment\n{sample_dir / 'val' / 'motorcycle_left.png'} (500,741,3)\n")
    dm = SRDataModule(train_dirs=[str(sample_dir / "train")], train_meta=[str(meta)], crop_size=64)
    dm.setup("fit")
    assert len(dm.train_set) == 5


def test_pairing_by_name(tmp_path):
    assert pair_key(tmp_path / "Canon_001_LR4.png") == pair_key(tmp_path / "Canon_001_HR.png") == "canon_001"
    (tmp_path / "lr").mkdir(), (tmp_path / "hr").mkdir()
    Image.fromarray(_rgb(17, 19)).save(tmp_path / "lr" / "x_LR4.png")
    Image.fromarray(_rgb(68, 76)).save(tmp_path / "hr" / "x_HR.png")
    item = PairedDataset(str(tmp_path / "lr"), str(tmp_path / "hr"))[0]
    # whole images, no silent crop to a multiple of 8 (the evaluation pads the LR and crops the SR back)
    assert item["lr"].shape == (3, 17, 19) and item["hr"].shape == (3, 68, 76)
    assert torch.equal(item["hr"], read_image(tmp_path / "hr" / "x_HR.png"))
    cropped = PairedDataset(str(tmp_path / "lr"), str(tmp_path / "hr"), crop_size=64)[0]  # an asked-for crop
    assert cropped["lr"].shape == (3, 16, 16) and torch.equal(cropped["hr"], item["hr"][:, 0:64, 4:68])


def test_datamodule_degrades_on_transfer_and_validation_is_fixed(sample_dir):
    dm = SRDataModule(
        train_dirs=[str(sample_dir / "train")], val_dirs=[str(sample_dir / "val")], crop_size=64,
        val_crop_size=64, batch_size=2, num_workers=0, degradation=BicubicDegradation(),
    )
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    batch = dm.on_after_batch_transfer(batch, 0)
    assert batch["hr"].shape == (2, 3, 64, 64) and batch["lr"].shape == (2, 3, 16, 16)
    assert torch.equal(batch["lr"], (batch["lr"] * 255).round() / 255)  # 8-bit like a saved image
    v1 = dm.on_after_batch_transfer(next(iter(dm.val_dataloader())), 0)
    v2 = dm.on_after_batch_transfer(next(iter(dm.val_dataloader())), 0)
    assert torch.equal(v1["lr"], v2["lr"]) and v1["seed"].dtype == torch.int64


def test_default_degradation_is_real_esrgan_on_the_batch_device(sample_dir):
    from ctsr.data.degradations import RealESRGANDegradation

    dm = SRDataModule(train_dirs=[str(sample_dir / "train")], crop_size=64, batch_size=2, num_workers=0)
    assert isinstance(dm.degradation, RealESRGANDegradation)
    dm.setup("fit")
    batch = dm.on_after_batch_transfer(next(iter(dm.train_dataloader())), 0)
    assert batch["lr"].shape == (2, 3, 16, 16) and torch.equal(batch["lr"], (batch["lr"] * 255).round() / 255)
    bicubic = BicubicDegradation()(batch["hr"])
    assert not torch.allclose(batch["lr"], bicubic, atol=1 / 255)  # really degraded, not the placeholder


def test_sample_pool_swaps_pairs_without_losing_any():
    dm = SRDataModule(train_dirs=["unused"], crop_size=32, batch_size=2, pool_size=4, degradation=BicubicDegradation())
    gen = torch.Generator().manual_seed(0)
    seen, out_ids = [], []
    for step in range(4):
        hr = torch.full((2, 3, 32, 32), float(step)) + torch.tensor([0.0, 0.5]).view(2, 1, 1, 1)
        batch = {"hr": hr / 10, "lr": hr[:, :, :8, :8] / 10}
        seen += [float(v) for v in hr[:, 0, 0, 0] / 10]
        out = dm._swap_with_pool(batch, gen)
        out_ids += [float(v) for v in out["hr"][:, 0, 0, 0]]
        assert torch.equal(out["lr"][:, :, 0, 0], out["hr"][:, :, 0, 0])  # pairs stay paired
    pool_ids = [float(v) for v in dm._pool["hr"][:, 0, 0, 0]]
    # the first two batches only fill the pool; afterwards every pair handed out or still pooled was seen once
    assert out_ids[:4] == seen[:4]
    assert sorted(out_ids[4:] + pool_ids) == sorted(seen)
    with pytest.raises(ConfigError, match="pool_size"):
        SRDataModule(train_dirs=["x"], crop_size=32, batch_size=2, pool_size=3)


# ---------------------------------------------------------------------------------------------------------------
# data/build_meta.py: OSEDiff's training list (LSDIR + first FFHQ images), checked against the test sets
# ---------------------------------------------------------------------------------------------------------------


def _save(path, arr, **kwargs):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, **kwargs)


def _build_meta_folders(tmp_path, sample_dir):
    """LSDIR-like and FFHQ-like folders and a StableSR-like test set (gt/ + lq/); one LSDIR image has the pixels
    of a test HR image under another name and format (a bundled real photo, PNG → lossless WebP)."""
    photo = np.asarray(Image.open(sample_dir / "train" / "coffee.png").convert("RGB"))[:64, :64]
    test = tmp_path / "RealSRVal_crop128"
    _save(test / "gt" / "Canon_001.png", photo)
    _save(test / "lq" / "Canon_001.png", photo[::4, ::4].copy())
    _save(test / "gt" / "Canon_002.png", _rgb(64, 64, seed=9))
    lsdir = tmp_path / "LSDIR" / "HR"
    for i in range(3):
        _save(lsdir / f"000000{i}.png", _rgb(40, 48, seed=i))
    _save(lsdir / "0001000.webp", photo, lossless=True)  # the leak
    ffhq = tmp_path / "FFHQ"
    for i in range(12):
        _save(ffhq / f"{i // 5 * 1000:05d}" / f"{i:05d}.png", _rgb(16, 16, seed=100 + i))
    return lsdir, ffhq, test


def test_build_meta_lists_lsdir_and_the_first_ffhq_images_and_reports_a_test_duplicate(tmp_path, sample_dir, capsys):
    from build_meta import main, pixel_hash

    lsdir, ffhq, test = _build_meta_folders(tmp_path, sample_dir)
    leak = lsdir / "0001000.webp"
    assert leak.read_bytes() != (test / "gt" / "Canon_001.png").read_bytes()
    assert pixel_hash(leak) == pixel_hash(test / "gt" / "Canon_001.png")
    out = tmp_path / "meta" / "train.txt"
    args = ["--lsdir", str(lsdir), "--ffhq", str(ffhq), "--ffhq-count", "7", "--test", str(test), "--out", str(out)]
    assert main(args) == 1  # a duplicate: reported, nothing written
    printed = capsys.readouterr().out
    assert f"duplicate: {leak.resolve()} = {(test / 'gt' / 'Canon_001.png').resolve()}" in printed
    assert "1 equal to a test image" in printed and not out.exists()

    assert main(args + ["--drop-duplicates"]) == 0
    dm = SRDataModule(train_meta=[str(out)], crop_size=32, num_workers=0)
    dm.setup("fit")  # the list is what data.train_meta reads
    listed = [Path(p) for p in dm.train_set.files]
    faces = sorted(ffhq.rglob("*.png"))[:7]  # 00000.png … 00006.png across the nested folders
    assert listed == [p.resolve() for p in sorted(lsdir.glob("*.png"))] + [p.resolve() for p in faces]
    assert leak.resolve() not in listed

    capsys.readouterr()
    assert main(["--check", str(out), "--test", str(test)]) == 0
    bad = tmp_path / "bad.txt"
    bad.write_text(f"{leak}\n{lsdir / '0000000.png'}\n")
    assert main(["--check", str(bad), "--test", str(test)]) == 1
    assert "duplicate:" in capsys.readouterr().out


def test_build_meta_bad_arguments_are_one_line(tmp_path, capsys):
    from build_meta import main

    assert main(["--lsdir", str(tmp_path / "nope"), "--test", str(tmp_path), "--out", str(tmp_path / "x.txt")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"build_meta.py: error: --lsdir: folder '{tmp_path / 'nope'}' does not exist"]
    assert main(["--test", str(tmp_path), "--out", str(tmp_path / "x.txt")]) == 2
    assert "no training folders" in capsys.readouterr().err
