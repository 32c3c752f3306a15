"""The networks (DESIGN §3–4, §6): the one-step generator (``generator``), the teachers (``teachers``), the
controllable model and its files (``control``), LoRA helpers (``lora``), SD components (``loading``, ``configs``),
prompts, the ResShift/SinSR port (``resshift``), ncnn conversion (``ncnn``),
``ctsr export`` (``export``) and the Hub (``hub``). Modules are imported on use:
``from ctsr.models.control import ControllableSR``.
"""
