"""``ctsr demo``: a local web page (gradio) with the control value t as a slider.

    ctsr demo                                                      # the shipped mini-world model, http://127.0.0.1:7860
    ctsr demo --ckpt runs/quickstart-stage2/ctsr.safetensors
    ctsr demo --ckpt owner/name --port 8000                        # a model from the Hugging Face Hub

Upload an image: the page shows the LR, and the ×4 result at the slider's t beside the bicubic ×4 upscale of the
input (a before/after comparison). Everything that does not depend on t is computed once per upload
(:meth:`Upscaler.prepare`: z0 and, for a model with one velocity, v); moving the slider is a
:meth:`Upscaler.render`, i.e. one VAE decode and the colour fix. The upscaler is the one of ``ctsr upscale``, built
from the same options with the same defaults (tiling, colour correction, precision, device), so the page shows what
``ctsr upscale --t T`` writes; the download is named ``<name>_t<T>.png`` as ``ctsr upscale`` names it. The page binds
to 127.0.0.1 (this machine only) unless ``--host`` says otherwise; uploads above ``--max-pixels`` are refused with a
message, before they are decoded. Needs the ``demo`` extra: ``pip install 'ctsr[demo]'``.
"""
from __future__ import annotations

import os
import signal
import socket
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import torch.nn.functional as F

from ctsr.choices import (
    DEFAULT_MAX_PIXELS,  # LR pixels (w × h): a 1024² input becomes a 4096² output
)
from ctsr.data.images import (
    IMAGE_EXTENSIONS,
    UnreadableImage,
    peek_size,
    read_image,
    write_image,
)
from ctsr.errors import ConfigError, check, describe
from ctsr.inference import upscale
from ctsr.inference.upscale import Upscaler, UpscaleState, t_suffix

T_STEP = 0.05


def slider_start(model, requested: float | None) -> tuple[float, str | None]:
    """Where the slider starts, and the line saying so when it is the model's recorded t: ``--t``, else the
    ``selected_t`` of ``ctsr select-t`` (the t ``ctsr upscale`` uses without ``--t``), else 0.5; a stage-1 model: 0."""
    if not getattr(model, "supports_control", True):
        return upscale.check_t_values(model, [0.0])[0], None
    if requested is not None:
        return upscale.check_t_values(model, [requested])[0], None
    if getattr(model, "selected_t", None) is None:
        return 0.5, None
    from ctsr.models.export import describe_selection

    record = {**(getattr(model, "selected_t_record", None) or {}), "t": model.selected_t}
    t = upscale.check_t_values(model, [model.selected_t])[0]
    return t, f"the slider starts at the model's {describe_selection(record)}; --t overrides it"


def chromium_path() -> str | None:
    """Debian's Chromium (``apt-get install chromium``), or ``$CTSR_CHROMIUM``; None when there is none."""
    import shutil

    for candidate in (os.environ.get("CTSR_CHROMIUM"), shutil.which("chromium"), shutil.which("chromium-browser"),
                      "/usr/bin/chromium"):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass
class Upload:
    """What one upload keeps between slider moves: the t-independent state and where its files go."""

    name: str           # the uploaded file's name (the download is <stem>_t<T>.png)
    state: UpscaleState
    folder: Path        # this upload's files: lr.png, <stem>_bicubic.png, t<T>/<stem>_t<T>.png
    bicubic: Path
    prepare_s: float


class Demo:
    """The page's logic, without gradio: ``load`` an upload (prepare once), ``render`` it at a t (a decode)."""

    def __init__(self, upscaler: Upscaler, max_pixels: int, workdir: Path):
        self.upscaler, self.max_pixels, self.workdir = upscaler, max_pixels, workdir
        self.lock = threading.Lock()  # one model, one call at a time (gradio runs handlers in threads)

    def load(self, path: str | Path, name: str | None = None) -> tuple[Upload | None, Path | None, Path | None, str]:
        """(upload, LR as PNG, bicubic ×4 as PNG, message); upload None and the message says why on bad input."""
        path = Path(path)
        name = name or path.name
        size = peek_size(path)  # from the header: a too-large upload is never decoded
        if size is not None and size[0] * size[1] > self.max_pixels:
            w, h = size
            return None, None, None, (
                f"⚠ **{name} is too large**: {w}×{h} = {w * h / 1e6:.1f} MP, this demo accepts up to "
                f"{self.max_pixels / 1e6:.2f} MP ({self.max_pixels} pixels). Downscale it, or restart with a larger "
                f"`--max-pixels` (`ctsr upscale` takes any size).")
        try:
            x = read_image(path)
        except UnreadableImage as err:
            reason = err.reason.replace(str(path), name)
            return None, None, None, (f"⚠ **Could not read {name}**: it is not an image file, or a damaged one "
                                      f"({reason}). Accepted: {', '.join(IMAGE_EXTENSIONS)}.")
        folder = self.workdir / uuid.uuid4().hex
        folder.mkdir(parents=True)
        start = time.perf_counter()
        try:
            with self.lock:
                state = self.upscaler.prepare(x[None])
                bicubic = state.reference
                if bicubic is None:  # --color none: the comparison still needs the bicubic upscale
                    bicubic = F.interpolate(x[None], scale_factor=self.upscaler.scale, mode="bicubic",
                                            align_corners=False).clamp(0, 1)
        except RuntimeError as err:
            return None, None, None, f"⚠ **{name} could not be upscaled**: {describe(err)}"
        lr, bic = folder / "lr.png", folder / f"{Path(name).stem}_bicubic.png"
        upload = Upload(name, state, folder, bic, time.perf_counter() - start)
        write_image(x, lr)
        write_image(bicubic[0], bic)
        return upload, lr, bic, ""

    def render(self, upload: Upload, t: float) -> tuple[Path, float]:
        """The SR of ``upload`` at ``t`` as ``<stem>_t<T>.png`` (as ``ctsr upscale`` writes it), and the seconds."""
        t = round(float(t), 6)
        start = time.perf_counter()
        with self.lock:
            sr = self.upscaler.render(upload.state, t)
        seconds = time.perf_counter() - start
        out = upload.folder / f"t{t:g}" / f"{Path(upload.name).stem}{t_suffix(t)}.png"
        out.parent.mkdir(exist_ok=True)
        write_image(sr[0], out)
        return out, seconds


def prompt_line(upload: Upload) -> str:
    """The DAPE prompt the upload was upscaled with (empty for a fixed prompt), for the status line."""
    prompts = upload.state.prompts
    return f" Prompt (DAPE tags): `{prompts[0]}`" if prompts else ""


def build_page(demo: Demo, initial_t: float, controllable: bool, title: str, note: str = ""):
    import gradio as gr

    def on_upload(file, t):
        if file is None:
            return None, None, None, gr.update(value=None, visible=False), ""
        upload, lr, bic, message = demo.load(file, Path(file).name)
        if upload is None:
            return None, None, None, gr.update(value=None, visible=False), message
        sr, seconds = demo.render(upload, t)
        h, w = upload.state.size
        s = demo.upscaler.scale
        status = (f"{upload.name}: {w}×{h} → {s * w}×{s * h}. Prepared once in {upload.prepare_s:.2f} s "
                  f"(z0{' and the velocity' if upload.state.velocity is not None else ''}); t = {float(t):g} "
                  f"rendered in {seconds:.2f} s." + prompt_line(upload))
        return (upload, str(lr), gr.update(value=(str(bic), str(sr)), label=_compare_label(t)),
                gr.update(value=str(sr), label=f"Download {sr.name}", visible=True), status)

    def on_t(upload, t):
        if upload is None:
            return gr.skip(), gr.skip(), gr.skip()
        sr, seconds = demo.render(upload, t)
        h, w = upload.state.size
        s = demo.upscaler.scale
        status = (f"{upload.name}: {w}×{h} → {s * w}×{s * h}. t = {float(t):g} rendered in {seconds:.2f} s "
                  f"(a decode: z0{' and the velocity' if upload.state.velocity is not None else ''} reused)."
                  + prompt_line(upload))
        return (gr.update(value=(str(upload.bicubic), str(sr)), label=_compare_label(t)),
                gr.update(value=str(sr), label=f"Download {sr.name}", visible=True), status)

    with gr.Blocks(title=title, analytics_enabled=False) as page:
        gr.Markdown(f"## {title}\nUpload an image, then move **t**: 0 is the realness end (sharper, invented "
                    "detail), 1 the fidelity end (closer to the input). Moving t only decodes: the rest is computed "
                    "once per upload." + (f"\n\n*{note}*" if note else ""))
        upload_state = gr.State(None)
        status = gr.Markdown("", elem_id="status")  # full width, above the fold: a bad upload is seen at once
        with gr.Row():
            with gr.Column(scale=1):
                file = gr.File(label="Upload an image (PNG, JPEG, WebP, BMP, TIFF)", type="filepath",
                               file_types=list(IMAGE_EXTENSIONS), elem_id="upload")
                lr = gr.Image(label="Input (LR)", type="filepath", format="png", interactive=False,
                              elem_id="lr", height=240, buttons=["fullscreen"])
                t = gr.Slider(0, 1, value=initial_t, step=T_STEP, label="t  (0 = realness · 1 = fidelity)",
                              interactive=controllable, elem_id="t",
                              info=None if controllable else "a stage-1 model: only t = 0 is defined")
                download = gr.DownloadButton("Download", visible=False, elem_id="download")
            with gr.Column(scale=2):
                compare = gr.ImageSlider(label="Before: bicubic ×4  |  after: CTSR at t", type="filepath",
                                         format="png", interactive=False, elem_id="compare", max_height=640,
                                         buttons=["fullscreen"])
        file.change(on_upload, [file, t], [upload_state, lr, compare, download, status], concurrency_id="model",
                    concurrency_limit=1)
        t.change(on_t, [upload_state, t], [compare, download, status], concurrency_id="model",
                 concurrency_limit=1, trigger_mode="always_last", show_progress="minimal")
    return page


def _compare_label(t: float) -> str:
    return f"Before: bicubic ×4  |  after: CTSR at t = {float(t):g}"


def _theme():
    import gradio as gr

    # system fonts: the page loads nothing from outside this machine
    return gr.themes.Default(font=["system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])


def take_screenshot(url: str, image: Path, t: float, out: Path, timeout_s: float = 300, start_t: float = 0.5) -> None:
    """Open ``url`` in headless Chromium, upload ``image``, move the slider from ``start_t`` to ``t`` (through
    another value when they are equal), and write a full-page screenshot to ``out``."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        raise ConfigError("--screenshot: needs playwright (pip install playwright)") from None
    exe = chromium_path()
    if exe is None:
        raise ConfigError("--screenshot: no Chromium found (apt-get install chromium, or set CTSR_CHROMIUM)")
    ms = timeout_s * 1000
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=exe, headless=True, args=["--no-proxy-server"])  # loopback
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.goto(url, timeout=ms)
            page.locator("#upload input[type=file]").set_input_files(str(image), timeout=ms)
            page.locator("#download").filter(has_text=f"{image.stem}{t_suffix(start_t)}.png").wait_for(timeout=ms)
            for value in ([1.0 - t] if t == start_t else []) + [t]:
                set_slider(page, value, timeout_s)
                page.locator("#download").filter(has_text=f"{image.stem}{t_suffix(value)}.png").wait_for(timeout=ms)
            page.locator("#status").filter(has_text="a decode").wait_for(timeout=ms)  # the slider-move path
            page.wait_for_function("() => [...document.querySelectorAll('#compare img')].every(i => i.complete)",
                                   timeout=ms)
            out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(out), full_page=True)
        finally:
            browser.close()


def set_slider(page, t: float, timeout_s: float = 60) -> None:
    """Type t into the slider's number box and confirm (what a keyboard user does)."""
    box = page.locator("#t input[type=number]")
    box.fill(f"{t:g}", timeout=timeout_s * 1000)
    box.press("Enter")
    box.blur()


def serve(ckpt: str | Path = "mini", *, host: str = "127.0.0.1", port: int = 7860,
          max_pixels: int = DEFAULT_MAX_PIXELS, initial_t: float | None = None, screenshot: Path | None = None,
          image: Path | None = None, device: str | None = None, precision: str = "auto", batch_size: int = 1,
          tile: int = 96, tile_overlap: int = 32, vae_tile: int = 256, vae_overlap: int = 32,
          shared_norms: str = "unet", color: str = "adain", compile: bool = False, control_steps: int | None = None,
          pretrained: str | None = None, osediff_lora: str | None = None, prompting: str = "model",
          ram_weights: str | None = None, dape_weights: str | None = None) -> int:
    """``ctsr demo``: serve the page until Ctrl+C (or, with ``screenshot``, write the page's screenshot and return);
    the keyword arguments are the command's options (:mod:`ctsr.cli.demo`), the upscaler's those of ``ctsr upscale``."""
    check(1 <= port <= 65535, "--port", f"must lie in [1, 65535], got {port}")
    check(max_pixels >= 1, "--max-pixels", f"must be ≥ 1, got {max_pixels}")
    check(batch_size >= 1, "--batch-size", f"must be ≥ 1, got {batch_size}")
    from ctsr.models.control import MAX_CONTROL_STEPS

    check(control_steps is None or 1 <= control_steps <= MAX_CONTROL_STEPS, "--control-steps",
          f"must lie in [1, {MAX_CONTROL_STEPS}], got {control_steps}")
    if screenshot is not None:
        check(image is not None and image.is_file(), "--image",
              f"give the image to upload for --screenshot (got {image})")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise ConfigError("ctsr demo needs gradio: pip install 'ctsr[demo]' (or `make install`)") from None
    from ctsr.models.export import load_model

    device = upscale.resolve_device(device)  # before loading: a wrong device fails fast
    model = load_model(ckpt, pretrained, osediff_lora)
    if control_steps is not None:
        model.control_steps = control_steps
    from ctsr.models.prompting import configure_prompts

    configure_prompts(model.generator, prompting, ram_weights, dape_weights)
    controllable = getattr(model, "supports_control", True)
    start_t, line = slider_start(model, None if screenshot is not None else initial_t)
    if line:
        print(f"ctsr demo: {line}", file=sys.stderr)
    # --screenshot: the page starts at the default t and the slider is moved to --t (0.7 when not given)
    shot_t = upscale.check_t_values(model, [initial_t if initial_t is not None else 0.7])[0]
    # the Upscaler of `ctsr upscale`, from the same options (the same code path, the same defaults)
    upscaler = Upscaler(model, str(device), precision, tile, tile_overlap, vae_tile,
                        vae_overlap, color, batch_size, compile,
                        shared_norms=shared_norms)
    with tempfile.TemporaryDirectory(prefix="ctsr-demo-") as tmp:
        demo = Demo(upscaler, max_pixels, Path(tmp))
        path = Path(str(ckpt))
        name = f"{path.parent.name}/{path.name}" if path.is_file() and path.parent.name else str(ckpt)
        base = model.generator.config.get("pretrained")
        note = {"tiny": "A tiny random-init model (a smoke test): the page works as with a real model, the pictures "
                        "are not meant to look good.",
                "mini": "The mini-world model: a 1.4 M-parameter student of SD's classes, trained on a CPU on 19 "
                        "photos with Real-ESRGAN x4plus as its realness teacher (README, \"Mini world\"). Real "
                        "use wants a model trained on SD 2.1-base."}.get(base, "")
        page = build_page(demo, start_t, controllable, f"CTSR ×4 — {name}", note)
        host = "127.0.0.1" if screenshot is not None else host
        port = free_port() if screenshot is not None else port
        launch = dict(server_name=host, server_port=port, theme=_theme(), ssr_mode=False, mcp_server=False,
                      footer_links=["gradio"], max_file_size="100mb", allowed_paths=[tmp], quiet=True,
                      prevent_thread_lock=True)
        _loopback_without_proxies(host)
        try:
            page.launch(**launch)
        except OSError as err:  # the port is taken
            raise ConfigError(f"--port: cannot serve on {host}:{port} ({describe(err)})") from None
        try:
            if screenshot is not None:
                take_screenshot(f"http://{host}:{port}/", image, shot_t, screenshot, start_t=start_t)
                print(f"ctsr demo: wrote {screenshot}")
                return 0
            print(f"ctsr demo: serving {ckpt} on http://{host}:{port} (Ctrl+C stops)", flush=True)
            signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops it as Ctrl+C does: files cleaned up
            page.block_thread()
            return 0
        finally:
            page.close()

def _loopback_without_proxies(host: str) -> None:
    """gradio checks its own page over HTTP after it starts (httpx, which honours HTTP(S)_PROXY): loopback must
    bypass any proxy, and on a loaded machine the check must wait longer than gradio's 3 s before it gives up and
    ends the server ("localhost is not accessible")."""
    names = [n for n in os.environ.get("NO_PROXY", os.environ.get("no_proxy", "")).split(",") if n]
    for name in ("127.0.0.1", "localhost", host):
        if name not in names and name != "0.0.0.0":
            names.append(name)
    os.environ["NO_PROXY"] = os.environ["no_proxy"] = ",".join(names)
    from gradio import networking

    if not hasattr(networking, "url_ok"):
        return

    def url_ok(url: str, timeout_s: float = 120) -> bool:
        import httpx

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if httpx.head(url, timeout=10, verify=False, trust_env=False).status_code < 400:
                    return True
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        return False

    networking.url_ok = url_ok


def _interrupt(signum, frame):
    raise KeyboardInterrupt
