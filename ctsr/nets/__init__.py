"""Pretrained networks that several roles build alike (``lpips``: LPIPS-VGG, the reconstruction loss of
:mod:`ctsr.losses.perceptual` and the ``lpips_vgg`` column of :mod:`ctsr.metrics`). Nothing here imports the roles
that use it."""
