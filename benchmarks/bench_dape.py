"""Benchmark: what per-image prompts (``prompting: dape``) add to one image — the tagger (RAM/DAPE) and the prompt's
CLIP embedding — against the generator's own one-step pass, measured in one run.

    python benchmarks/bench_dape.py [--size tiny|full] [--lr-size 64] [--repeats 3] [--device cpu|cuda]

``tiny``: the reduced tagger of the parity fixtures (tests/fixtures/dape) and the tiny random-init generator and text
encoder; ``full``: the released architectures with random weights (the cost does not depend on the values) — RAM
Swin-L at 384² (≈ 0.3 G parameters with the tagging head) and SD 2.1-base's OpenCLIP-H text encoder; the baseline is
then the SD 2.1-base one-step generator (``sd21-random``, ~4 GB: a GPU is the place for it; on a CPU it takes
minutes, so ``--no-generator`` skips it). Rounds are interleaved (tagger, text, generator, tagger, …); medians.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    with torch.no_grad():
        fn()
    sync(device)
    return time.perf_counter() - start


def tiny_tagger():
    from ctsr.models.ram import RAMTagger

    cfg = json.loads((ROOT / "tests" / "fixtures" / "dape" / "reduced_config.json").read_text())
    s, h = cfg["swin"], cfg["q2l_config"]
    with tempfile.TemporaryDirectory(prefix="ctsr-bench-dape-") as folder:  # the tagger reads both files when built
        tmp = Path(folder)
        (tmp / "tags.txt").write_text("\n".join(cfg["tags"]))
        (tmp / "thresholds.txt").write_text("\n".join(cfg["thresholds"]))
        return RAMTagger(image_size=cfg["image_size"], embed_dim=s["embed_dim"], depths=s["depths"],
                         num_heads=s["num_heads"], window_size=s["window_size"], hidden_size=h["hidden_size"],
                         intermediate_size=h["intermediate_size"], num_attention_heads=h["num_attention_heads"],
                         num_hidden_layers=h["num_hidden_layers"], tag_list=tmp / "tags.txt",
                         thresholds=tmp / "thresholds.txt")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=["tiny", "full"], default="tiny")
    p.add_argument("--lr-size", type=int, default=64, help="LR side (the generator's input; the tagger reads ×4)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-generator", action="store_true", help="skip the generator baseline (full size on a CPU)")
    a = p.parse_args()
    device = torch.device(a.device)
    from ctsr.models.generator import OneStepGenerator
    from ctsr.models.loading import load_sd_components
    from ctsr.models.ram import RAMTagger

    if a.size == "tiny":
        tagger = tiny_tagger()
        parts = load_sd_components("tiny")
        generator = OneStepGenerator("tiny").eval() if not a.no_generator else None
    else:
        tagger = RAMTagger()
        parts = load_sd_components("sd21-random")
        generator = OneStepGenerator("sd21-random").eval() if not a.no_generator else None
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    tagger = tagger.to(device=device, dtype=dtype).eval()
    text = parts.text_encoder.to(device).eval()
    if generator is not None:
        generator.to(device)
    x_lr = torch.rand(1, 3, a.lr_size, a.lr_size, device=device)
    up = torch.nn.functional.interpolate(x_lr, scale_factor=4, mode="bicubic").clamp(0, 1)
    ids = parts.tokenizer(["3D CG rendering, abacus, zoo, a photo,"], padding="max_length",
                          max_length=parts.tokenizer.model_max_length, truncation=True,
                          return_tensors="pt").input_ids.to(device)
    jobs = {"tagger (preprocess + Swin + head)": lambda: tagger.tag(up),
            "CLIP text encoder (1 prompt)": lambda: text(ids)}
    if generator is not None:
        jobs["one-step generator (baseline)"] = lambda: generator(x_lr)
    for fn in jobs.values():  # warm-up
        timed(fn, device)
    times: dict[str, list[float]] = {k: [] for k in jobs}
    for _ in range(a.repeats):
        for name, fn in jobs.items():
            times[name].append(timed(fn, device))
    base = statistics.median(times["one-step generator (baseline)"]) if generator is not None else None
    n_tagger = sum(p.numel() for p in tagger.parameters()) / 1e6
    print(f"size {a.size}, device {device} ({torch.get_num_threads()} threads), LR {a.lr_size}², tagger "
          f"{n_tagger:.2f} M parameters in {dtype}, medians of {a.repeats}")
    for name, ts in times.items():
        med = statistics.median(ts)
        ratio = f"  {med / base:.3f}× the generator" if base else ""
        print(f"  {name:38s} {med * 1e3:9.1f} ms{ratio}")


if __name__ == "__main__":
    main()
