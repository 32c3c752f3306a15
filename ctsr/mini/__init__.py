"""The mini world: real photos, a real pretrained realness teacher (Real-ESRGAN x4plus, converted from a registry
package), a fidelity teacher and a small student of the real classes trained here on a CPU (README, "Mini world").

The artefacts it ships live in ``ctsr/mini/weights/`` (package data, listed with their SHA-256 in ``SHA256SUMS``):
``base/`` (the student's base model in diffusers layout, float16: a VAE pre-trained as an autoencoder, a UNet
pre-trained as a latent denoiser, a random text encoder),
``fidelity_compact_x4.pth`` (the fidelity teacher) and ``ctsr-mini.safetensors`` (the trained CTSR model).
``pretrained: mini`` and ``sr_model: mini`` name the first two.
"""
from pathlib import Path

WEIGHTS = Path(__file__).parent / "weights"
BASE = WEIGHTS / "base"
FIDELITY = WEIGHTS / "fidelity_compact_x4.pth"
MODEL = WEIGHTS / "ctsr-mini.safetensors"
