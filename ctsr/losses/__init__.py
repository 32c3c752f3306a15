"""The training objectives as plain ``nn.Module``s and functions: ``stage1`` (eq. 1–4), ``stage2`` (eq. 5–9 and the
endpoint objective), ``perceptual`` (LPIPS-VGG as the reconstruction loss)."""
