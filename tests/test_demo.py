"""``ctsr demo``: the page's logic (prepare once per upload, a decode per t) and the page itself in headless Chromium.

The browser test starts ``ctsr demo`` as a user does (a subprocess on a free port of 127.0.0.1), uploads a bundled
photo, moves the slider to two values, and compares the page's images with what ``ctsr upscale`` writes for the same
file and t. Chromium is Debian's (``make browser``, which ``.ci/run`` calls); Playwright drives it.
"""
import io
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch.nn.functional as F
from PIL import Image

from ctsr.choices import DEFAULT_MAX_PIXELS
from ctsr.cli import demo as demo_cli
from ctsr.cli import options
from ctsr.cli import upscale as upscale_cli
from ctsr.data.images import read_image
from ctsr.inference import demo
from ctsr.inference.upscale import Upscaler
from ctsr.models.export import load_model
from ctsr.models.generator import OneStepGenerator

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model_file(tiny_model_file):
    """A tiny stage-2 model whose LoRAs change the output (so that t changes the picture)."""
    return tiny_model_file(stage1_lora=True)


@pytest.fixture(scope="module")
def photo(sample_dir, tmp_path_factory):
    """A bundled photo (the astronaut), made small: 48×40 (odd-shaped on purpose, the LR pads to the UNet)."""
    out = tmp_path_factory.mktemp("photo") / "astronaut.png"
    with Image.open(sample_dir / "train" / "astronaut.png") as img:
        img.resize((48, 40), Image.BICUBIC).save(out)
    return out


@pytest.fixture()
def bad_files(tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not an image" * 10)
    big = tmp_path / "big.png"
    Image.new("RGB", (49, 40), (10, 20, 30)).save(big)  # one column more than --max-pixels allows below
    return broken, big


def _png(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        assert img.format == "PNG"  # lossless all the way: the page shows the written 8-bit pixels
        return np.asarray(img.convert("RGB"), dtype=np.int16)


def test_parser_is_ctsr_upscales(model_file):
    """The demo's upscaling options are `ctsr upscale`'s, defaults included; it binds to 127.0.0.1."""
    d = demo_cli.build_parser().parse_args(["--ckpt", "m"])
    u = upscale_cli.build_parser().parse_args(["in", "out", "--ckpt", "m"])
    for dest in options.UPSCALER_OPTIONS:
        assert getattr(d, dest) == getattr(u, dest), dest
    assert (d.tile, d.vae_tile, d.color, d.shared_norms) == (96, 256, "adain", "unet")
    assert d.host == "127.0.0.1" and d.port == 7860 and d.max_pixels == DEFAULT_MAX_PIXELS


def test_a_slider_move_is_a_decode(model_file, photo, bad_files, tmp_path, monkeypatch):
    """load = prepare (z0 and v) once; render at any t reuses them: no UNet pass, only the decoder, and the
    pixels equal the Upscaler's (the `ctsr upscale` path); bad uploads get a message, not an exception."""
    up = Upscaler(load_model(model_file), "cpu")
    page = demo.Demo(up, max_pixels=48 * 40, workdir=tmp_path)
    upload, lr, bic, message = page.load(photo)
    assert message == "" and upload.state.velocity is not None
    x = read_image(photo)
    assert np.array_equal(np.asarray(Image.open(lr)), (x.numpy().transpose(1, 2, 0) * 255).round().astype(np.uint8))
    bicubic = F.interpolate(x[None], scale_factor=4, mode="bicubic", align_corners=False).clamp(0, 1)[0]
    assert np.abs(np.asarray(Image.open(bic), dtype=np.int16)
                  - (bicubic.numpy().transpose(1, 2, 0) * 255).round()).max() == 0

    calls = {"unet": 0, "decode": 0}
    gen = up.model.generator
    for unet in (up.teacher_unet, up.student_unet):
        unet.register_forward_hook(lambda *a: calls.__setitem__("unet", calls["unet"] + 1))
    real_decode = gen.decode
    monkeypatch.setattr(gen, "decode", lambda z: (calls.__setitem__("decode", calls["decode"] + 1), real_decode(z))[1])
    expected = {t: sr[0] for t, sr in zip((0.25, 0.75), up(x[None], [0.25, 0.75]))}
    calls.update(unet=0, decode=0)
    paths = {}
    for t in (0.25, 0.75):
        paths[t], _ = page.render(upload, t)
    assert calls == {"unet": 0, "decode": 2}  # two slider moves: two decodes, z0 and v reused
    for t, path in paths.items():
        assert path.name == f"astronaut_t{t:g}.png"  # as `ctsr upscale --t 0.25 0.75` names it
        ref = (expected[t].numpy().transpose(1, 2, 0) * 255).round()
        assert np.abs(np.asarray(Image.open(path), dtype=np.int16) - ref).max() <= 1
    assert not np.array_equal(np.asarray(Image.open(paths[0.25])), np.asarray(Image.open(paths[0.75])))

    broken, big = bad_files
    upload, *_, message = page.load(broken)
    assert upload is None and "Could not read broken.png" in message and str(broken.parent) not in message
    upload, *_, message = page.load(big)
    assert upload is None and "big.png is too large" in message and "49×40" in message and "--max-pixels" in message


def test_a_stage1_model_renders_t0_only(photo, tmp_path):
    """A stage-1 model has no control: the page renders t = 0 (its slider is fixed there) and refuses t > 0."""
    from ctsr.errors import ConfigError
    from ctsr.models.export import Stage1Only

    up = Upscaler(Stage1Only.from_stage1(OneStepGenerator("tiny")).eval(), "cpu")
    page = demo.Demo(up, max_pixels=48 * 40, workdir=tmp_path)
    upload, *_, message = page.load(photo)
    assert message == "" and upload.state.velocity is None
    path, _ = page.render(upload, 0.0)
    expected = (up(read_image(photo)[None], [0.0])[0][0].numpy().transpose(1, 2, 0) * 255).round()
    assert np.abs(np.asarray(Image.open(path), dtype=np.int16) - expected).max() <= 1
    with pytest.raises(ConfigError, match="stage-1 model"):
        page.render(upload, 0.5)


def _wait_for_server(proc, url: str, log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"ctsr demo exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(url, timeout=5) as r:  # loopback
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"ctsr demo did not answer on {url} within {timeout_s:.0f} s:\n{log.read_text()[-3000:]}")


def _browser():
    """(sync_playwright, chromium path); skips, with the reason, only where no browser can be installed."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        reason = "playwright is not installed (pip install -e '.[dev]')"
    else:
        exe = demo.chromium_path()
        if exe is not None:
            return sync_playwright, exe
        reason = "no Chromium on this machine (make browser: apt-get install chromium, needs root)"
    if os.environ.get("CI"):
        pytest.fail(f"CI installs the browser (.ci/run → make browser), yet: {reason}")
    pytest.skip(reason)


@pytest.mark.timeout(900)
def test_the_page_in_a_browser(model_file, photo, bad_files, tmp_path):
    sync_playwright, exe = _browser()
    port = demo.free_port()
    url = f"http://127.0.0.1:{port}/"
    log = tmp_path / "demo.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "OMP_NUM_THREADS": "1"}
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "ctsr.cli", "demo", "--ckpt", str(model_file), "--device",
                                 "cpu", "--host", "127.0.0.1", "--port", str(port), "--max-pixels", str(48 * 40)],
                                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    try:
        # meanwhile, what `ctsr upscale` writes for the same file at the two t
        ts = (0.2, 0.8)
        assert upscale_cli.main([str(photo), str(tmp_path / "cli"), "--ckpt", str(model_file), "--t", *map(str, ts),
                             "--device", "cpu"]) == 0
        written = {t: _png((tmp_path / "cli" / f"astronaut_t{t:g}.png").read_bytes()) for t in ts}
        _wait_for_server(proc, url, log, timeout_s=300)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=exe, headless=True, args=["--no-proxy-server"])
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 800})
                page.set_default_timeout(120_000)
                page.goto(url)
                page.locator("#upload input[type=file]").set_input_files(str(photo))
                page.locator("#download").filter(has_text="astronaut_t0.5.png").wait_for()
                assert page.locator("#lr img").count() == 1
                shown = {}
                for t in ts:
                    demo.set_slider(page, t)
                    page.locator("#download").filter(has_text=f"astronaut_t{t:g}.png").wait_for()
                    srcs = page.locator("#compare img").evaluate_all("imgs => imgs.map(i => i.src)")
                    assert len(srcs) == 2 and srcs[1].endswith(f"astronaut_t{t:g}.png"), srcs
                    before, after = (_png(page.request.get(s).body()) for s in srcs)
                    assert before.shape == after.shape == (160, 192, 3)  # ×4 of 40×48
                    shown[t] = after
                    # the page's SR is what `ctsr upscale` writes (to 8-bit rounding)
                    assert np.abs(after - written[t]).max() <= 1, t
                    assert f"t = {t:g}" in page.locator("#status").inner_text()
                with page.expect_download() as dl:
                    page.locator("#download").click()
                assert dl.value.suggested_filename == "astronaut_t0.8.png"
                assert np.array_equal(_png(Path(dl.value.path()).read_bytes()), shown[0.8])
                assert np.abs(shown[0.2] - shown[0.8]).mean() > 1  # t changes the picture
                # bad uploads: one clear message on the page
                broken, big = bad_files
                page.locator("#upload button[aria-label='Clear']").first.click()
                page.locator("#upload input[type=file]").set_input_files(str(broken))
                page.locator("#status").filter(has_text="Could not read broken.png").wait_for()
                page.locator("#upload button[aria-label='Clear']").first.click()
                page.locator("#upload input[type=file]").set_input_files(str(big))
                page.locator("#status").filter(has_text="big.png is too large").wait_for()
            finally:
                browser.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    assert proc.returncode is not None


def test_the_slider_starts_at_the_recorded_t(model_file, tmp_path):
    """One truth for t: the demo starts where `ctsr upscale` runs without --t (the model's selected_t), and says so."""
    from ctsr.evaluation.select_t import record_selection

    plain = load_model(model_file)
    assert demo.slider_start(plain, None) == (0.5, None) and demo.slider_start(plain, 0.3) == (0.3, None)
    selected = tmp_path / "sel.safetensors"
    selected.write_bytes(Path(model_file).read_bytes())
    record_selection(selected, {"t": 0.6, "rule": "psnr-drop", "split": "val-set", "metrics": {}})
    t, line = demo.slider_start(load_model(selected), None)
    assert t == 0.6 and "t = 0.6 (recorded by `ctsr select-t`: rule psnr-drop, split val-set)" in line
    assert demo.slider_start(load_model(selected), 0.2) == (0.2, None)
