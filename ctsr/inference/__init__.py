"""Inference for users: ``ctsr upscale`` (any image size, several t at once) and ``ctsr bench``.

``tiling`` (overlapping Gaussian-blended tiles for the UNet and the VAE), ``color`` (AdaIN / wavelet colour fix),
``upscale`` (:class:`~ctsr.inference.upscale.Upscaler` and the command line), ``bench`` (speed against the bare
diffusers graph). Modules are imported on use: ``from ctsr.inference.upscale import Upscaler``.
"""
