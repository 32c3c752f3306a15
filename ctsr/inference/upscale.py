"""``ctsr upscale``: super-resolve your own images ×4 with a trained CTSR model, at one or several control values t.

    ctsr upscale photo.jpg photo_sr.png --ckpt runs/stage2/ctsr.safetensors --t 0.3
    ctsr upscale photos/ photos_sr/ --ckpt ctsr.safetensors --t 0 0.5 1     # photos_sr/<name>_t0.5.png, …

t = 0 is the realness end (the stage-1 output), t = 1 the fidelity end (DESIGN §6). INPUT is a file or a folder
(searched recursively for PNG, JPEG, WebP, BMP and TIFF; sub-folders are mirrored in OUTPUT). Any image size:
the LR is padded (reflect) to a multiple of the UNet's downsampling, the latent is processed in overlapping tiles
(:mod:`ctsr.inference.tiling`), and the padding is cropped off. Colours are then matched to the bicubic-upscaled
input (:mod:`ctsr.inference.color`). A file that cannot be read is reported and skipped; the exit status is 1 when
any image failed. Existing outputs are kept unless ``--overwrite``; nothing is ever written inside the input folder.
"""
from __future__ import annotations

import errno
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ctsr.checkpoints import atomic_write, check_writable, sweep_temp_files
from ctsr.choices import PRECISION_NAMES
from ctsr.data.images import (
    IMAGE_EXTENSIONS,
    UnreadableImage,
    list_images,
    peek_size,
    read_image,
    write_image,
)
from ctsr.errors import ConfigError, check, describe, shown
from ctsr.inference.color import COLOR_FIXES, ColorFix, color_fix
from ctsr.inference.tiling import Tiling, lr_multiple, pad_to_multiple

# write errors that end the run (one line naming the file; the images written before are kept)
STOPPING_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG)
PRECISIONS = dict(zip(PRECISION_NAMES, (torch.float32, torch.bfloat16, torch.float16)))
Precision = Literal["auto", "fp32", "bf16", "fp16"]
REFERENCE_CELLS = 64 * 64  # latent pixels of one 512×512 output: the unit of ``batch_size`` for tiles


def resolve_device(device: str | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise ConfigError(f"--device: {describe(err)}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device: '{device}' asked for, but this machine has no usable CUDA device")
    return dev


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    check(precision == "auto" or precision in PRECISIONS, "--precision",
          f"one of auto, {', '.join(PRECISIONS)}; got {precision!r}")
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return PRECISIONS[precision]


def check_t_values(model, ts: Sequence[float]) -> list[float]:
    """The t values as floats in [0, 1], duplicates dropped; a stage-1 model allows only 0."""
    ts = [float(t) for t in ts]
    check(len(ts) > 0, "--t", "give at least one value")
    bad = [t for t in ts if not 0 <= t <= 1]  # also catches nan
    check(not bad, "--t", f"must lie in [0, 1] (0 = realness end, 1 = fidelity end), got {bad}")
    check(getattr(model, "supports_control", True) or all(t == 0 for t in ts), "--t",
          "this is a stage-1 model: only t = 0 is defined (train stage 2, or export a stage-2 checkpoint)")
    return list(dict.fromkeys(ts))


def prepare_model(model, device: torch.device, dtype: torch.dtype, compile: bool = False):
    """Ready a ``ControllableSR`` for inference, in place, and return (T_S UNet, student UNet or None).

    The control adapter becomes two plain UNets (:meth:`~ctsr.models.control.ControllableSR.split_networks`: T_S in
    ``generator.unet``, the student S in ``student_unet``), the VAE encoder's stage-1 LoRA is merged, the text
    encoder released, UNet and VAE moved to ``device`` in ``dtype`` (the noise schedule stays float32).
    ``compile``: ``torch.compile`` the UNets and both VAE halves.
    """
    gen = model.generator
    model.eval().requires_grad_(False)
    model.split_networks()
    gen.prompts.release()
    student = model.student_unet
    model.to(device)
    unets = [gen.unet] + ([student] if student is not None else [])
    for module in (*unets, gen.vae):  # nn.Module.to: diffusers' own `to` warns about fp32 modules it has none of
        nn.Module.to(module, device=device, dtype=dtype)
    if compile:
        for module in (*unets, gen.vae.encoder, gen.vae.decoder):
            module.compile(dynamic=False)
    return gen.unet, student


class Upscaler:
    """A CTSR model ready to upscale tensors of any size: device, precision, tiling, colour correction.

    Its state is explicit: the model's two networks (``teacher_unet`` = T_S, ``student_unet`` = S, split by
    :func:`prepare_model`), ``tiling`` (set as the generator's: its networks run over tiles), ``color``; what
    :meth:`prepare` computes for an input (z0, the velocity, the colour reference) is an :class:`UpscaleState`
    that :meth:`render` reads for any t.

    Args:
        model: a ``ControllableSR`` (from :func:`ctsr.models.control.load_model`); prepared in place.
        device: ``cuda``, ``cuda:1``, ``cpu``; default CUDA when there is one.
        precision: weights and activations of UNet and VAE; ``auto``: bf16 on CUDA, fp32 on the CPU.
        tile, tile_overlap: UNet tiles in latent pixels (1 latent pixel = 8 output pixels); 0: never tile (the
            overlap is then ignored).
        vae_tile, vae_overlap: VAE encoder/decoder tiles in latent pixels; 0: never tile (overlap ignored).
        shared_norms: whose tiles' GroupNorms use each image's statistics (as untiled): ``unet``, ``all``, ``none``.
        color: colour correction against the bicubic-upscaled input: ``adain``, ``wavelet`` or ``none``.
        batch_size: images per network call; tiles per call are bounded by the same pixel count
            (batch_size × a 512×512 output), so memory is that of ``batch_size`` 512² images or of one tile.
        compile: ``torch.compile`` the networks (pays off on long runs of equal sizes).
    """

    def __init__(
        self,
        model,
        device: str | None = None,
        precision: Precision = "auto",
        tile: int = 96,
        tile_overlap: int = 32,
        vae_tile: int = 256,
        vae_overlap: int = 32,
        color: ColorFix = "adain",
        batch_size: int = 1,
        compile: bool = False,
        shared_norms: str = "unet",
    ) -> None:
        check(color in COLOR_FIXES, "--color", f"one of {', '.join(COLOR_FIXES)}; got {color!r}")
        check(batch_size >= 1, "--batch-size", f"must be ≥ 1, got {batch_size}")
        for flag, value in (("--tile", tile), ("--tile-overlap", tile_overlap), ("--vae-tile", vae_tile),
                            ("--vae-overlap", vae_overlap)):
            check(isinstance(value, int) and not isinstance(value, bool), flag, f"must be an integer, got {value!r}")
        tile_overlap = 0 if tile == 0 else tile_overlap      # 0 = no tiling, as documented: no overlap to check
        vae_overlap = 0 if vae_tile == 0 else vae_overlap
        self.device = resolve_device(device)
        self.dtype = resolve_precision(precision, self.device)
        self.color, self.batch_size = color, batch_size
        self.model = model
        self.last_prompts: list[str] | None = None
        self.tiling = Tiling.for_generator(model.generator, tile=tile, overlap=tile_overlap, vae_tile=vae_tile,
                                           vae_overlap=vae_overlap, max_cells=batch_size * REFERENCE_CELLS,
                                           shared_norms=shared_norms)  # validated before any work
        self.teacher_unet, self.student_unet = prepare_model(model, self.device, self.dtype, compile)

    @property
    def tiling(self) -> Tiling:
        """How the model's networks run over tiles (the generator's ``tiling``); set a new one to change it."""
        return self.model.generator.tiling

    @tiling.setter
    def tiling(self, tiling: Tiling) -> None:
        self.model.generator.tiling = tiling

    @property
    def pad_multiple(self) -> int:
        """LR sides are padded to a multiple of this: latent sides (LR/2) a multiple of the UNet's downsampling,
        and at least 8."""
        return lr_multiple(self.model.generator.unet, self.scale)

    @property
    def scale(self) -> int:
        """The model's upscaling factor (4; 1 for same-size tasks such as low-light enhancement)."""
        return int(getattr(self.model.generator, "scale", 4))

    @torch.no_grad()
    def prepare(self, x_lr: Tensor, with_velocity: bool = True) -> "UpscaleState":
        """Everything about x_LR (B, 3, h, w) in [0, 1] that does not depend on t: the padded input, z0 = G_TS(x_LR)
        and, when the model's velocity does not depend on t, v (one student pass; ``with_velocity=False`` skips it, for
        a caller that renders t = 0 only). Then :meth:`render` any t."""
        x = x_lr.to(self.device, torch.float32)
        h, w = x.shape[-2:]
        x_pad = pad_to_multiple(x, self.pad_multiple)
        gen, velocity = self.model.generator, None
        prompter, prompts, context = getattr(gen, "prompter", None), None, None
        if prompter is not None:  # per-image prompts (DAPE) from the unpadded LR, as OSEDiff tags the image itself
            prompts = prompter.pin(gen, x, "lr")
            context = gen.context
        try:
            z0 = self.model.z0(x_pad.to(self.dtype))                         # z0 = G_TS(x_LR), DESIGN §6
            if with_velocity and self.student_unet is not None and getattr(self.model, "constant_velocity", False):
                velocity = self.model.control_velocity(z0)                   # v: one pass for every t
        finally:
            if prompter is not None:
                prompter.unpin(gen)
        reference = None
        if self.color != "none":
            reference = F.interpolate(x, scale_factor=self.scale, mode="bicubic", align_corners=False).clamp(0, 1)
        return UpscaleState(z0=z0, velocity=velocity, reference=reference, size=(h, w), prompts=prompts,
                            context=context)

    @torch.no_grad()
    def render(self, state: "UpscaleState", t: float) -> Tensor:
        """SR (B, 3, 4h, 4w) in [0, 1] (float32, on the device) at one t from a :meth:`prepare` state: a decode
        (plus the colour fix) when the velocity is known, else the control pass(es) and a decode."""
        t = check_t_values(self.model, [t])[0]
        gen = self.model.generator
        if state.context is not None:
            gen.use_context(state.context)  # this batch's per-image prompts (another batch may have come between)
        z = self.model.controlled_latent(state.z0, t, state.velocity)       # z(t), DESIGN §6
        out = (gen.decode(z) + 1) / 2
        h, w = state.size
        s = self.scale
        return color_fix(out[..., : s * h, : s * w], state.reference, self.color)

    @torch.no_grad()
    def __call__(self, x_lr: Tensor, ts: Sequence[float]) -> list[Tensor]:
        """x_LR (B, 3, h, w) in [0, 1], any h, w → one SR batch (B, 3, 4h, 4w) in [0, 1] (float32, on the device)
        per t in ``ts``; z0 (and the velocity, when it does not depend on t) computed once for all t."""
        ts = check_t_values(self.model, ts)
        state = self.prepare(x_lr, with_velocity=any(t > 0 for t in ts))  # t = 0 alone: the stage-1 pass only
        self.last_prompts = state.prompts  # the per-image prompts of this call (DAPE), None for a fixed prompt
        return [self.render(state, t) for t in ts]


@dataclass
class UpscaleState:
    """What :meth:`Upscaler.prepare` computed for one batch: z0, the velocity (None when it depends on t), the
    colour reference (bicubic ×4 of the input, None without colour correction), the unpadded LR size, and the
    per-image prompts with their embeddings when the model is prompted with DAPE tags."""

    z0: Tensor
    velocity: Tensor | None
    reference: Tensor | None
    size: tuple[int, int]
    prompts: list[str] | None = None  # per-image prompts (``prompting: dape``), None for the fixed prompt
    context: Tensor | None = None     # their embeddings (B, 77, D)


# -- the command line ----------------------------------------------------------------------------------------------
@dataclass
class Job:
    source: Path
    outputs: dict[float, Path] = field(default_factory=dict)  # t → file still to write


def t_suffix(t: float) -> str:
    return f"_t{t:g}"


def _save_options(ext: str, quality: int) -> dict:
    from PIL import Image

    fmt = Image.registered_extensions().get(ext.lower())
    if fmt is None:
        raise ConfigError(f"OUTPUT: no image format for the extension '{ext}' (use one of "
                          f"{', '.join(IMAGE_EXTENSIONS)})")
    options = {"format": fmt}
    if fmt in ("JPEG", "WEBP"):
        options["quality"] = quality
    if fmt == "JPEG":
        options["subsampling"] = 0  # 4:4:4: chroma subsampling would undo part of the ×4
    return options


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _is_image_extension(ext: str) -> bool:
    """An extension some image format uses (PIL's registry, plus a few it may lack): never a folder name."""
    from PIL import Image

    return ext.lower() in Image.registered_extensions() or ext.lower() in (".gif", ".heic", ".heif", ".avif", ".jxl",
                                                                            ".svg", ".raw", ".dng", ".cr2", ".nef")


def unusable_inputs(source: Path) -> tuple[list[tuple[Path, str]], list[Path]]:
    """What a folder INPUT holds besides the images ctsr reads: (files it cannot use, with the reason: broken links
    and other image formats — reported as failed), and other files (listed, not an error)."""
    if not source.is_dir():
        return [], []
    failed, other = [], []
    for p in sorted(source.rglob("*")):
        if any(part.startswith(".") for part in p.relative_to(source).parts):
            continue  # hidden files and folders (.DS_Store, .git): not inputs
        if p.is_symlink() and not p.exists():
            failed.append((p, "broken link"))
        elif p.is_file() and p.suffix.lower() not in IMAGE_EXTENSIONS:
            if _is_image_extension(p.suffix):
                failed.append((p, f"{p.suffix} is not supported (use {', '.join(IMAGE_EXTENSIONS)})"))
            else:
                other.append(p)
    return failed, other


def plan_jobs(source: Path, output: Path, ts: list[float], fmt: str, overwrite: bool) -> tuple[list[Job], int]:
    """Which file to write for which input and t; refuses to write into the input folder or over the input.
    Returns the jobs with outputs left to write, and the number of outputs kept because they exist."""
    if not source.exists():
        raise ConfigError(f"INPUT: '{source}' does not exist")
    several = len(ts) > 1
    if source.is_dir():
        files = list_images(source)
        if not files:
            raise ConfigError(f"INPUT: no images in '{source}' (extensions {', '.join(IMAGE_EXTENSIONS)})")
        if _inside(output.resolve(), source.resolve()):
            raise ConfigError(f"OUTPUT: '{output}' is the input folder or inside it; the input folder is never "
                              f"written to, choose another OUTPUT")
        if output.exists() and not output.is_dir():
            raise ConfigError(f"OUTPUT: '{output}' is a file; with a folder as INPUT, OUTPUT is a folder")
        targets = {}
        for f in files:
            ext = f.suffix if fmt == "keep" else ".png"
            base = output / f.relative_to(source).parent
            targets[f] = {t: base / f"{f.stem}{t_suffix(t) if several else ''}{ext}" for t in ts}
    else:
        files = [source]
        if output.suffix and not output.is_dir() and output.suffix.lower() not in IMAGE_EXTENSIONS \
                and _is_image_extension(output.suffix):
            raise ConfigError(f"OUTPUT: '{output}': {output.suffix} is not a format ctsr writes (use one of "
                              f"{', '.join(IMAGE_EXTENSIONS)}, or a folder name without an image extension)")
        if output.suffix.lower() in IMAGE_EXTENSIONS and not output.is_dir():
            stem, ext, base = output.stem, output.suffix, output.parent
        else:
            stem, ext, base = source.stem, source.suffix if fmt == "keep" else ".png", output
        targets = {source: {t: base / f"{stem}{t_suffix(t) if several else ''}{ext}" for t in ts}}
        if any(p.resolve() == source.resolve() for p in targets[source].values()):
            raise ConfigError(f"OUTPUT: '{output}' would overwrite the input image")
    seen: dict[Path, Path] = {}
    for f, outs in targets.items():
        for p in outs.values():
            if p in seen:
                raise ConfigError(f"OUTPUT: '{seen[p]}' and '{f}' would both be written to '{p}' (use --format keep)")
            seen[p] = f
            _save_options(p.suffix, 95)  # an unknown extension fails here, before any work
    jobs, kept = [], 0
    for f, outs in targets.items():
        todo = {t: p for t, p in outs.items() if overwrite or not p.exists()}
        kept += len(outs) - len(todo)
        if todo:
            jobs.append(Job(f, todo))
    return jobs, kept


def _write(x: Tensor, path: Path, quality: int) -> None:
    """Write through ``.<name>.tmp-<pid>`` beside it, then rename: an interrupted run leaves no half-written image
    (and the next run removes the temporary file a kill left)."""
    with atomic_write(path, "OUTPUT") as f:
        write_image(x, f, **_save_options(path.suffix, quality))


def _prepare_outputs(jobs: list[Job]) -> None:
    """Before the model is loaded: every output folder must take files (a read-only or unwritable one is one line
    now, not a failure per image later), and temporary files that killed runs left for these outputs are removed
    (``.<name>.tmp-<pid>``; earlier versions' ``.<name>.part``)."""
    folders: dict[Path, set[str]] = {}
    for job in jobs:
        for p in job.outputs.values():
            folders.setdefault(p.parent, set()).add(p.name)
    for folder, names in sorted(folders.items()):
        check_writable(folder, "OUTPUT")
        sweep_temp_files(folder, names, legacy=[re.compile(r"^\." + re.escape(n) + r"\.part$") for n in names])


def prompt_file(job: Job, several: bool) -> Path:
    """Where the prompt of ``job``'s image is written: beside its output(s), ``<output stem>.txt`` (without the
    ``_t<T>`` suffix when several t are written; OSEDiff writes ``txt/<name>.txt``)."""
    t, path = next(iter(job.outputs.items()))
    stem = path.stem[: -len(t_suffix(t))] if several and path.stem.endswith(t_suffix(t)) else path.stem
    return path.with_name(stem + ".txt")


def upscale_paths(input: Path, output: Path, *, ckpt: str | Path = "mini", t: Sequence[float] | None = None,
                  device: str | None = None, precision: str = "auto", batch_size: int = 1, tile: int = 96,
                  tile_overlap: int = 32, vae_tile: int = 256, vae_overlap: int = 32, shared_norms: str = "unet",
                  color: str = "adain", format: str = "png", quality: int = 95, overwrite: bool = False,
                  compile: bool = False, control_steps: int | None = None, pretrained: str | None = None,
                  osediff_lora: str | None = None, prompting: str = "model", ram_weights: str | None = None,
                  dape_weights: str | None = None) -> int:
    """``ctsr upscale``: every image of ``input`` (a file or a folder) ×4 into ``output`` at each t; the exit status
    (0, or 1 when any image failed). The keyword arguments are the command's options (:mod:`ctsr.cli.upscale`)."""
    from tqdm import tqdm

    from ctsr.models.control import MAX_CONTROL_STEPS
    from ctsr.models.export import (
        describe_selection,
        load_model,
        recorded_selection,
        report_source,
    )

    input, output = Path(input), Path(output)
    check(1 <= quality <= 100, "--quality", f"must lie in [1, 100], got {quality}")
    check(control_steps is None or 1 <= control_steps <= MAX_CONTROL_STEPS, "--control-steps",
          f"must lie in [1, {MAX_CONTROL_STEPS}], got {control_steps}")
    if t is not None:
        check_t_values(None, t)
    check(tile >= 0, "--tile", f"must be ≥ 0 (0: no tiling), got {tile}")
    check(vae_tile >= 0, "--vae-tile", f"must be ≥ 0 (0: no tiling), got {vae_tile}")
    source = report_source(ckpt, "ctsr upscale")
    if t is None:  # the model's own t (`ctsr select-t`), read from its file's header, else the realness end
        selected = recorded_selection(source)
        t = [0.0 if selected is None else float(selected["t"])]
        if selected is not None:
            print(f"ctsr upscale: using the model's {describe_selection(selected)}; --t overrides it",
                  file=sys.stderr)
    ts = check_t_values(None, t)
    jobs, kept = plan_jobs(input, output, ts, format, overwrite)
    unusable, other = unusable_inputs(input)
    for path, reason in unusable:
        print(f"ctsr upscale: skipped {path}: {reason}", file=sys.stderr)
    hint = " (use --overwrite to replace them)" if kept else ""
    if not jobs:
        print(f"ctsr upscale: nothing to do, all {kept} output file(s) exist{hint}"
              + (f"; {len(unusable)} input(s) not usable: " + ", ".join(shown(p) for p, _ in unusable[:5])
                 if unusable else ""))
        return 1 if unusable else 0
    _prepare_outputs(jobs)
    device = resolve_device(device)  # before loading: a wrong device fails fast
    model = load_model(source, pretrained, osediff_lora)
    check_t_values(model, ts)
    if control_steps is not None:
        model.control_steps = control_steps
    from ctsr.models.prompting import configure_prompts

    configure_prompts(model.generator, prompting, ram_weights, dape_weights)
    upscaler = Upscaler(model, str(device), precision, tile, tile_overlap, vae_tile,
                        vae_overlap, color, batch_size, compile,
                        shared_norms=shared_norms)

    # equal sizes go through the network together; the header tells the size without decoding the image
    jobs.sort(key=lambda j: (peek_size(j.source) or (0, 0))[::-1])  # (h, w); unreadable first
    failed: list[tuple[Path, str]] = list(unusable)
    done = written = 0
    bar = tqdm(total=len(jobs), unit="img", desc="upscale", disable=not input.is_dir(), file=sys.stderr)

    def fail(job: Job, reason: str) -> None:
        failed.append((job.source, reason))
        tqdm.write(f"ctsr upscale: skipped {job.source}: {reason}", file=sys.stderr)

    i = 0
    while i < len(jobs):
        group: list[tuple[Job, Tensor]] = []
        while i < len(jobs) and len(group) < batch_size:
            job = jobs[i]
            i += 1
            try:
                image = read_image(job.source)
            except UnreadableImage as err:
                fail(job, err.reason)
                bar.update(1)
                continue
            if group and (image.shape != group[0][1].shape or set(job.outputs) != set(group[0][0].outputs)):
                i -= 1  # another size (or other t still to write): starts the next batch
                break
            group.append((job, image))
        if not group:
            continue
        ts_group = [t for t in ts if t in group[0][0].outputs]
        try:
            upscaler.last_prompts = None
            results = upscaler(torch.stack([image for _, image in group]), ts_group)
        except RuntimeError as err:  # one batch too large (or one odd image) must not end the run
            if os.environ.get("CTSR_TRACEBACK"):
                raise
            reason = describe(err)
            if isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in str(err):
                reason += " (lower --batch-size, --tile or --vae-tile)"
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            for job, _ in group:
                fail(job, reason)
            bar.update(len(group))
            continue
        for k, (job, _) in enumerate(group):
            bad = [t for t, sr in zip(ts_group, results) if not bool(torch.isfinite(sr[k]).all())]
            if bad:  # never an all-black image called success
                fail(job, f"the model produced non-finite values at t = {', '.join(f'{t:g}' for t in bad)} "
                          f"(try --precision fp32; nothing written)")
                continue
            try:
                for t, sr in zip(ts_group, results):
                    _write(sr[k], job.outputs[t], quality)  # creates the folder; one OutputError if it cannot
                    written += 1
                if upscaler.last_prompts is not None:  # the prompt this image was upscaled with, beside it
                    with atomic_write(prompt_file(job, len(ts) > 1), "OUTPUT") as f:
                        f.write(upscaler.last_prompts[k].encode("utf-8"))
                done += 1
            except OSError as err:
                if err.errno in STOPPING_ERRORS:  # no space, read-only: every next image would fail the same way
                    bar.close()  # the bar's line ends before the error line
                    raise
                fail(job, f"could not write: {describe(err)}")
        bar.update(len(group))
    bar.close()

    summary = (f"ctsr upscale: {done} of {len(jobs)} image(s) upscaled, {written} file(s) written to "
               f"{shown(output)}")
    if kept:
        summary += f"; {kept} existing output file(s) kept{hint}"
    if failed:
        summary += f"; {len(failed)} failed: " + ", ".join(f"{shown(p)} ({r})" for p, r in failed[:5])
        summary += " …" if len(failed) > 5 else ""
    if other:
        summary += f"; {len(other)} other file(s) ignored (not images): " + ", ".join(shown(p) for p in other[:3])
        summary += " …" if len(other) > 3 else ""
    print(summary)
    return 1 if failed else 0
