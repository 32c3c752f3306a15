"""The networks (DESIGN §3–4, §6): the one-step generator (``generator``), the teachers (``teachers``), the
controllable model with its export and loaders (``control``), LoRA helpers (``lora``), SD components (``loading``,
``configs``), prompts, the ResShift/SinSR port (``resshift``), ncnn conversion (``ncnn``), where a model comes from
(``sources``: ``mini``, Hub ids, CTSR folders), ``ctsr export`` (``export``) and publishing on the Hub (``hub``).
Modules are imported on use: ``from ctsr.models.control import ControllableSR``.
"""
