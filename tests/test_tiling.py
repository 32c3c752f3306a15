"""Tiled inference: the tile grid, exact blending for local operators, the model's maths over tiles, and seams.

What a test can hold the tiling to. With networks whose receptive field fits in the overlap (local stand-ins below)
the tiled model equals the untiled one to float precision, through the model's own z0 → control → decode code. The
tiny model of the real classes adds three things a tile changes: GroupNorm statistics (shared across tiles by
default, so they no longer count), self-attention and a receptive field as wide as its latent. Without
self-attention (same classes, ``only_cross_attention`` UNet, no VAE mid-block attention) the tiled VAE equals the
untiled one within a few 8-bit levels and the UNet's error falls towards zero as its tiles grow; with it, shared norms
cut the error about 4×, and the error is no larger along the seams than elsewhere.
"""
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ctsr.errors import ConfigError
from ctsr.inference.tiling import gaussian_weights, tile_starts, tiled_inference, tiled_map
from ctsr.models.control import ControllableSR
from ctsr.models.generator import OneStepGenerator


pytestmark = pytest.mark.usefixtures("one_thread")


def _lr(h=24, w=40):
    from skimage import data

    img = torch.from_numpy(data.astronaut()).permute(2, 0, 1).float()[None] / 255
    return F.interpolate(img, size=(h, w), mode="area")


def _seams(size, tile, overlap, align, scale):
    """Output-pixel positions of the overlap mid-lines, where the blend hands over from one tile to the next."""
    starts = tile_starts(size, tile, overlap, align)
    return [round((a + tile + b) / 2 * scale) for a, b in zip(starts, starts[1:])]


def _seam_mask(h, w, rows, cols, half=4):
    mask = torch.zeros(h, w, dtype=torch.bool)
    for r in rows:
        mask[max(0, r - half) : r + half] = True
    for c in cols:
        mask[:, max(0, c - half) : c + half] = True
    return mask


@pytest.mark.parametrize("size,tile,overlap,align", [(12, 8, 4, 2), (20, 8, 4, 2), (256, 96, 32, 8), (512, 96, 32, 8),
                                                     (257, 128, 16, 1), (64, 96, 32, 8), (30, 8, 0, 1), (40, 16, 8, 8)])
def test_tile_starts_cover_overlap_and_align(size, tile, overlap, align):
    starts = tile_starts(size, tile, overlap, align)
    if tile >= size:
        assert starts == [0]
        return
    assert starts[0] == 0 and starts[-1] == size - tile  # every tile full size, the last one at the border
    assert all(s % align == 0 for s in starts)           # keeps the UNet's downsampling phase
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert all(0 < g <= tile - overlap + align - 1 for g in gaps)
    assert len(starts) <= math.ceil((size - tile) / (tile - overlap - align + 1)) + 1  # not more tiles than needed


def test_gaussian_weights_peak_in_the_centre_and_vanish_at_the_edges():
    w = gaussian_weights(8, 12)
    assert w.shape == (8, 12) and torch.allclose(w, w.flip(0)) and torch.allclose(w, w.flip(1))
    assert w[3:5, 5:7].min() == w.max()
    # σ = 0.1 tile: exp(−d²/2σ²) with d in tiles; row 0 lies 3.5 px from the centre, row 3 0.5 px
    expected = math.exp(-((3.5 / 8) ** 2 - (0.5 / 8) ** 2) / (2 * 0.1**2))
    assert math.isclose(float(w[0, 5] / w[3, 5]), expected, rel_tol=1e-4)


def test_tiled_map_is_exact_for_local_operators():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 5, 3, padding=1)
    x = torch.randn(2, 3, 12, 20)
    with torch.no_grad():
        # receptive field ±1 cell ≤ half the overlap: every pixel comes from tiles that see all it depends on
        ref, out = conv(x), tiled_map(lambda t, i: conv(t), x, 8, 4)
        assert (out - ref).abs().max() <= 1e-3 * ref.abs().max()
        chunked = tiled_map(lambda t, i: conv(t), x, 8, 4, max_cells=3 * 64)  # 3 tiles per call
        assert torch.allclose(chunked, out, atol=1e-6)
        # per-sample arguments follow their tiles
        shifted = tiled_map(lambda t, i: t + i.reshape(-1, 1, 1, 1), x, 8, 4)
        assert torch.allclose(shifted, x + torch.arange(2.0).reshape(-1, 1, 1, 1), atol=1e-5)
        # cells of 8 px in or out: the encoder's and decoder's geometry
        img = torch.randn(2, 3, 96, 160)

        def down(t, i):
            return conv(F.avg_pool2d(t, 8))

        def up(t, i):
            return conv(F.interpolate(t, scale_factor=8, mode="nearest"))

        assert (tiled_map(down, img, 8, 4, scale_in=8) - down(img, None)).abs().max() <= 1e-3
        assert (tiled_map(up, x, 8, 4, scale_out=8) - up(x, None)).abs().max() <= 1e-3 * ref.abs().max()


# -- the model over tiles ------------------------------------------------------------------------------------------
class LocalUNet(nn.Module):
    """A UNet stand-in with a receptive field of ±1 latent pixel: a 3×3 convolution, a stride-2 branch (tile starts
    must keep its phase), τ-dependence, and an adapter that the model switches like the control LoRA."""

    def __init__(self):
        super().__init__()
        self.config = SimpleNamespace(block_out_channels=(8, 8))  # total downsampling 2, as the tiny UNet
        self.inp, self.out, self.adapter = nn.Conv2d(4, 8, 3, padding=1), nn.Conv2d(8, 4, 1), nn.Conv2d(4, 4, 1)
        self.adapter_on, self.tile_shapes = True, set()

    def disable_adapters(self):
        self.adapter_on = False

    def enable_adapters(self):
        self.adapter_on = True

    def forward(self, z, tau, encoder_hidden_states=None):
        self.tile_shapes.add(tuple(z.shape[-2:]))
        eps = self.out(torch.tanh(self.inp(z))) * (1 + tau.reshape(-1, 1, 1, 1) / 999)
        eps = eps + F.interpolate(F.avg_pool2d(z, 2), scale_factor=2)
        return SimpleNamespace(sample=eps + self.adapter(z) if self.adapter_on else eps)


class LocalVAE(nn.Module):
    """An 8× VAE stand-in, receptive field ±1 latent pixel: 8×8 average pooling and a 3×3 convolution in; a 3×3
    convolution, nearest ×8 and a 1×1 convolution out."""

    def __init__(self):
        super().__init__()
        self.config = SimpleNamespace(block_out_channels=(8, 8, 8, 8), scaling_factor=0.18215)
        self.enc, self.dec_lat, self.dec_px = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(4, 3, 3, padding=1), \
            nn.Conv2d(3, 3, 1)

    def encode(self, x):
        from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

        return SimpleNamespace(latent_dist=DiagonalGaussianDistribution(self.enc(F.avg_pool2d(x, 8))))

    def decode(self, z):
        return SimpleNamespace(sample=self.dec_px(F.interpolate(self.dec_lat(z), scale_factor=8, mode="nearest")))


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    gen = OneStepGenerator("tiny")
    model = ControllableSR.from_stage1(gen)
    with torch.no_grad():
        for n, p in model.generator.unet.named_parameters():
            if "lora_B.control" in n:
                p.normal_(0, 0.05)
    return model.eval()


def test_tiled_model_equals_the_untiled_one_for_local_networks():
    """z0 from the UNet over tiles, the control step over tiles of the blended z0, a tiled decode — through the
    model's own ``sweep`` — equal the untiled model when the networks are local (here: to float precision)."""
    torch.manual_seed(1)
    gen = OneStepGenerator("tiny")
    model = ControllableSR.from_stage1(gen).eval()
    gen.unet, gen.vae = LocalUNet(), LocalVAE()
    x, ts = _lr(), [0.0, 0.5, 1.0]
    with torch.no_grad():
        ref = model.sweep(x, ts)
        assert gen.unet.tile_shapes == {(12, 20)}
        with tiled_inference(gen, tile=8, overlap=4, vae_tile=8, vae_overlap=4):
            out = model.sweep(x, ts)
    assert gen.unet.tile_shapes == {(12, 20), (8, 8)}  # the UNet saw tiles
    for a, b in zip(ref, out):
        err = (a - b).abs().amax(1)[0]
        assert float(err.max()) < 1e-4, float(err.max())
    assert not torch.allclose(ref[0], ref[2])  # the control changes the output, so the control step was tiled too


def test_one_tile_is_the_model_bit_for_bit_and_the_tiling_is_state(tiny_model):
    """Tiling is the generator's state (``generator.tiling``), not patched methods: nothing of the generator, its
    UNet or its VAE is replaced, and the state is back after the block, however it ends."""
    gen = tiny_model.generator
    x = _lr()
    parts = {"gen": gen, "unet": gen.unet, "vae": gen.vae}
    attributes = {name: set(vars(m)) for name, m in parts.items()}
    with torch.no_grad():
        ref = tiny_model.sweep(x, [0.0, 0.7])
        with tiled_inference(gen, tile=96, overlap=32, vae_tile=256, vae_overlap=32) as tiling:
            assert gen.tiling is tiling and (tiling.tile, tiling.vae_tile, tiling.align) == (96, 256, 2)
            added = {name: set(vars(m)) - attributes[name] for name, m in parts.items()}
            assert added == {"gen": {"tiling"}, "unet": set(), "vae": set()}, added  # state, no method shadowed
            out = tiny_model.sweep(x, [0.0, 0.7])
    assert all(torch.equal(a, b) for a, b in zip(ref, out))
    assert gen.tiling is None
    with pytest.raises(RuntimeError, match="boom"):
        with tiled_inference(gen, tile=8, overlap=4):
            raise RuntimeError("boom")
    assert gen.tiling is None


def _seam_ratios(diff, h, w, tile, overlap, align):
    """Mean error in 8-px bands along the seams over the mean elsewhere, the same for the column-to-column step of
    the difference (a visible seam is a step), and the largest error in the bands."""
    err = diff.abs().amax(0)
    rows, cols = _seams(h // 8, tile, overlap, align, 8), _seams(w // 8, tile, overlap, align, 8)
    band = _seam_mask(h, w, rows, cols)
    step = (diff[:, :, 1:] - diff[:, :, :-1]).abs().amax(0).mean(0)
    at_seams = step[[c - 1 for c in cols]].mean()
    elsewhere = step[[j for j in range(w - 1) if j + 1 not in cols]].mean()
    return float(err[band].mean() / err[~band].mean()), float(at_seams / elsewhere), float(err[band].max())


def test_tiny_model_shared_norms_cut_the_error_and_leave_no_seam(tiny_model):
    """The tiny random model with self-attention: its tiled output differs from the untiled one (attention and its
    receptive field span the whole latent); shared GroupNorm statistics cut that difference about 4× (measured
    0.089 → 0.022 mean) and it is no larger along the seams than elsewhere, nor jumps across them."""
    x = _lr(96, 160)
    tiles = dict(tile=32, overlap=16, vae_tile=32, vae_overlap=16)
    with torch.no_grad():
        ref = tiny_model(x, 0.5)[0]
        with tiled_inference(tiny_model.generator, shared_norms="none", **tiles):
            per_tile = tiny_model(x, 0.5)[0]
        with tiled_inference(tiny_model.generator, shared_norms="all", **tiles):
            shared = tiny_model(x, 0.5)[0]
    assert shared.shape == ref.shape == (3, 384, 640) and torch.isfinite(shared).all()
    err_tile, err_shared = float((per_tile - ref).abs().mean()), float((shared - ref).abs().mean())
    assert err_shared < 0.4 * err_tile and err_shared < 0.04, (err_shared, err_tile)
    band, step, _ = _seam_ratios(shared - ref, 384, 640, 32, 16, 2)
    assert band <= 1.5 and step <= 1.5, (band, step)


@pytest.fixture(scope="module")
def local_attention_model():
    """The tiny model of the same classes without self-attention: the UNet's attention attends to the prompt only,
    the VAE has no mid-block attention."""
    from ctsr.models import configs

    mp = pytest.MonkeyPatch()
    mp.setattr(configs, "TINY_UNET", {**configs.TINY_UNET, "only_cross_attention": True})
    mp.setattr(configs, "TINY_VAE", {**configs.TINY_VAE, "mid_block_add_attention": False})
    try:
        torch.manual_seed(0)
        model = ControllableSR.from_stage1(OneStepGenerator("tiny")).eval()
    finally:
        mp.undo()
    with torch.no_grad():
        for n, p in model.generator.unet.named_parameters():
            if "lora_B.control" in n:
                p.normal_(0, 0.05)
    return model


def test_tiled_vae_equals_the_untiled_one_with_shared_norms(local_attention_model):
    model, x = local_attention_model, _lr(96, 160)
    with torch.no_grad():
        ref = model(x, 0.5)[0]
        with tiled_inference(model.generator, tile=0, overlap=0, vae_tile=32, vae_overlap=16, shared_norms="all"):
            out = model(x, 0.5)[0]
        with tiled_inference(model.generator, tile=0, overlap=0, vae_tile=32, vae_overlap=16):  # the default
            per_tile = model(x, 0.5)[0]
    err = (out - ref).abs()
    assert float(err.mean()) < 1e-3 and float(err.max()) < 4 / 255, (float(err.mean()), float(err.max()))  # 3e-4, 2.3
    assert float((per_tile - ref).abs().mean()) > 30 * float(err.mean())  # per-tile statistics: 0.10
    *_, band_max = _seam_ratios(out - ref, 384, 640, 32, 16, 1)
    assert band_max < 4 / 255, band_max * 255  # along the seams too: a few 8-bit levels at most


def test_tiled_unet_converges_to_the_untiled_one(local_attention_model):
    """What is left is the UNet's receptive field beyond the blended part of a tile: it shrinks as tiles grow."""
    model, x = local_attention_model, _lr(96, 160)
    errors = []
    with torch.no_grad():
        ref = model(x, 0.5)[0]
        for tile, overlap in ((32, 16), (64, 48)):
            with tiled_inference(model.generator, tile=tile, overlap=overlap, vae_tile=0, vae_overlap=0):
                errors.append(float((model(x, 0.5)[0] - ref).abs().mean()))
    assert errors[1] < 0.5 * errors[0] and errors[1] < 0.004, errors  # measured 0.0087, 0.0014


class _NormNet(nn.Module):
    """GroupNorms only — one on (N, C, H, W), one on attention-style (N, C, H·W) tokens — around pointwise layers:
    with the image's statistics every tile gives exactly the untiled values."""

    def __init__(self):
        super().__init__()
        self.inp, self.norm, self.tokens_norm = nn.Conv2d(3, 8, 1), nn.GroupNorm(4, 8), nn.GroupNorm(2, 8)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        h = torch.tanh(self.norm(self.inp(x)))
        n, c, hh, ww = h.shape
        return self.tokens_norm(h.reshape(n, c, hh * ww)).reshape(n, c, hh, ww)


@pytest.mark.parametrize("max_cells", [0, 64, 2 * 64])  # all tiles in one call; 1 and 2 tiles per call (threads)
def test_shared_norms_pool_each_images_statistics(max_cells):
    torch.manual_seed(0)
    net = _NormNet()
    with torch.no_grad():
        net.norm.weight.normal_(), net.norm.bias.normal_()
    scale, shift = torch.tensor([1.0, 3.0]).view(2, 1, 1, 1), torch.tensor([0.0, 2.0]).view(2, 1, 1, 1)
    x = torch.randn(2, 3, 12, 20) * scale + shift  # two images with different statistics
    with torch.no_grad():
        ref = net(x)
        out = tiled_map(lambda t, i: net(t), x, 8, 4, max_cells=max_cells, shared_norms=net)
        per_tile = tiled_map(lambda t, i: net(t), x, 8, 4, max_cells=max_cells)
    assert (out - ref).abs().max() < 1e-5
    assert (per_tile - ref).abs().max() > 1e-2  # a tile's own statistics are not the image's
    assert "forward" not in vars(net.norm) and "forward" not in vars(net.tokens_norm)  # the norms are back
    # the VAE's geometry: cells of 8 px in, several layers per cell
    img = torch.randn(1, 3, 64, 96)
    down = nn.Sequential(nn.AvgPool2d(2), _NormNet(), nn.AvgPool2d(4))
    with torch.no_grad():
        ref = down(img)
        out = tiled_map(lambda t, i: down(t), img, 4, 2, scale_in=8, max_cells=max_cells // 4, shared_norms=down)
    assert (out - ref).abs().max() < 1e-5


def test_shared_norm_calls_keep_the_callers_modes():
    """Tile calls run in threads; grad and autocast modes are per thread and must follow the caller's."""
    net = _NormNet()
    x = torch.randn(1, 3, 12, 20)
    seen = []

    def fn(t, i):
        seen.append((torch.is_grad_enabled(), torch.is_autocast_enabled("cpu")))
        return net.inp(t)  # a convolution: bf16 under CPU autocast

    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = tiled_map(fn, x, 8, 4, max_cells=64, shared_norms=net)
    assert out.dtype == torch.bfloat16 and set(seen) == {(False, True)}
    assert len(seen) == len(tile_starts(12, 8, 4)) * len(tile_starts(20, 8, 4)) == 8  # one call per tile


def test_shared_norms_pass_on_an_error_without_hanging():
    net = _NormNet()
    x = torch.randn(1, 3, 12, 20)

    def fn(t, i):
        if net.calls == 2:  # the second of three tile calls (threads) fails before its first norm
            net.calls += 1
            raise RuntimeError("tile failed")
        return net(t)

    with pytest.raises(RuntimeError, match="tile failed"), torch.no_grad():
        tiled_map(fn, x, 8, 4, max_cells=64, shared_norms=net)
    assert "forward" not in vars(net.norm)

    calls = {"n": 0}

    def uneven(t, i):  # the second tile call runs the network twice: the calls cannot meet at every norm
        calls["n"] += 1
        return net(t) + net(t) if calls["n"] == 2 else net(t)

    with pytest.raises(RuntimeError, match="lock step"), torch.no_grad():
        tiled_map(uneven, x, 8, 4, max_cells=64, shared_norms=net)


def test_tile_options_are_checked(tiny_model):
    gen = tiny_model.generator
    with pytest.raises(ConfigError, match="tile"):
        with tiled_inference(gen, tile=7):  # not a multiple of the UNet's downsampling (2)
            pass
    with pytest.raises(ConfigError, match="tile_overlap"):
        with tiled_inference(gen, tile=8, overlap=8):
            pass
    with pytest.raises(ConfigError, match="vae_overlap"):
        with tiled_inference(gen, vae_tile=16, vae_overlap=20):
            pass
    with pytest.raises(ConfigError, match="shared_norms"):
        with tiled_inference(gen, shared_norms="vae"):
            pass
    assert gen.tiling is None
