"""Per-image prompts: the prompt embedding c of the student and the teachers (paper eq. 2, Algorithm 1) from the
image's DAPE tags, as OSEDiff runs its model (``prompting: {mode: dape}`` on the generator).

What OSEDiff does (github.com/cswry/OSEDiff), and the option that follows it here:

* inference (``test_osediff.py``): DAPE (RAM + its LoRA, :mod:`ctsr.models.ram`) tags the ×4-upscaled LR
  (``ram_transforms``: resize to 384², ImageNet normalisation; the model in fp16), and the prompt is
  ``f"{tags}, {args.prompt},"`` (tags joined by ", "; the user prompt, default empty) → ``template``
  (``{tags}``, ``{prompt}``: the generator's ``prompt``); the prompt is saved beside each output (``txt/``);
* training (``train_osediff.py``): plain RAM (``pretrained_condition=None``) tags the **ground truth**, prompt
  ``"{tags}"`` → ``train_source: gt``, ``train_tagger: ram``, ``train_template`` (``train_source: lr`` tags the LR
  with DAPE exactly as at inference).

The embeddings come from the generator's CLIP text encoder (kept alive for this, and moved to the images' device on
first use), cached by prompt text (LRU, ``cache_size``). The generator asks :meth:`PromptProvider.update` for the
contexts of every LR batch it encodes (``OneStepGenerator.latent``); a caller that knows better (the ground truth
in training, the unpadded image in ``ctsr upscale``) pins them first with :meth:`PromptProvider.pin`. ``mode:
fixed`` (the default, or no ``prompting`` at all) keeps the one fixed prompt, bit for bit.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Literal

import torch
from torch import Tensor, nn

from ctsr.choices import PROMPTINGS
from ctsr.errors import check

PromptMode = Literal["fixed", "dape"]
TAGGER_PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class Prompting:
    """Where the prompt c comes from (the generator's ``prompting`` option).

    Args:
        mode: ``fixed`` (the generator's ``prompt`` for every image) or ``dape`` (per-image tags).
        ram_weights: RAM's ``ram_swin_large_14m.pth``.
        dape_weights: DAPE's ``DAPE.pth`` (the LoRA laid over RAM for degraded inputs); null: plain RAM.
        template: the prompt from the LR's DAPE tags (validation, ``ctsr upscale``, the demo, and training with
            ``train_source: lr``); ``{tags}`` = the tags joined by ", ", ``{prompt}`` = the generator's ``prompt``.
            OSEDiff's ``test_osediff.py``: ``"{tags}, {prompt},"``.
        train_source: what the training batches are tagged from: ``gt`` (OSEDiff's ``train_osediff.py``) or ``lr``.
        train_tagger: the tagger of ``train_source: gt``: ``ram`` (OSEDiff: RAM without DAPE's LoRA) or ``dape``.
        train_template: the prompt of ``train_source: gt`` (OSEDiff: ``"{tags}"``).
        precision: the tagger's weights and activations; ``auto``: fp16 on CUDA (as OSEDiff), fp32 on the CPU.
        antialias: the tagger's resize to 384² (False: OSEDiff's pinned torchvision 0.15; True: torchvision ≥ 0.17).
        cache_size: prompt embeddings kept (LRU by prompt text; 77×1024 floats each for SD 2.1).
        tagger: :class:`~ctsr.models.ram.RAMTagger` arguments (default: the released Swin-L 384, 4585 tags; tests
            use reduced sizes).
    """

    mode: PromptMode = "fixed"
    ram_weights: str = "weights/ram_swin_large_14m.pth"
    dape_weights: str | None = "weights/DAPE.pth"
    template: str = "{tags}, {prompt},"
    train_source: Literal["gt", "lr"] = "gt"
    train_tagger: Literal["ram", "dape"] = "ram"
    train_template: str = "{tags}"
    precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    antialias: bool = False
    cache_size: int = 256
    tagger: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check(self.mode in ("fixed", "dape"), "prompting.mode", f"must be fixed or dape, got {self.mode!r}")
        check(self.train_source in ("gt", "lr"), "prompting.train_source",
              f"must be gt or lr, got {self.train_source!r}")
        check(self.train_tagger in ("ram", "dape"), "prompting.train_tagger",
              f"must be ram or dape, got {self.train_tagger!r}")
        check(self.precision == "auto" or self.precision in TAGGER_PRECISIONS, "prompting.precision",
              f"one of auto, {', '.join(TAGGER_PRECISIONS)}; got {self.precision!r}")
        check(self.cache_size >= 1, "prompting.cache_size", f"must be ≥ 1, got {self.cache_size}")
        for name in ("template", "train_template"):
            try:
                getattr(self, name).format(tags="", prompt="")
            except (KeyError, IndexError, ValueError) as err:
                check(False, f"prompting.{name}", f"may use {{tags}} and {{prompt}} only ({err!r})")

    @classmethod
    def parse(cls, value: "Prompting | dict | str | None") -> "Prompting | None":
        """A ``Prompting`` from the generator's argument or a stored config (a dict); ``"dape"``/``"fixed"``: that
        mode with the defaults."""
        if value is None or isinstance(value, Prompting):
            return value
        if isinstance(value, str):
            return cls(mode=value)  # type: ignore[arg-type]
        check(isinstance(value, dict), "prompting", f"must be a mapping or fixed/dape, got {type(value).__name__}")
        unknown = sorted(set(value) - set(cls.__dataclass_fields__))
        check(not unknown, "prompting", f"unknown option(s) {', '.join(unknown)}")
        return cls(**value)

    def as_config(self) -> dict:
        return asdict(self)


def join_tags(tags: list[str]) -> str:
    return ", ".join(tags)  # the official generate_tag's join


class PromptProvider:
    """Tags images and turns the tags into prompt embeddings (B, 77, D) for the generator's ``context``.

    Args:
        spec: the :class:`Prompting` options (``mode: dape``).
        text_encoder, tokenizer: the generator's CLIP text encoder and tokenizer (the provider keeps them).
        prompt: the generator's fixed prompt (``{prompt}`` in the templates).
        upsample: the generator's ×4 of the LR, (B, 3, h, w) → (B, 3, 4h, 4w) in [0, 1] (DAPE tags the upscaled LR).
        taggers: already built taggers, ``{"dape": …, "ram": …}`` (else loaded from the files on first use).
    """

    def __init__(self, spec: Prompting, text_encoder: nn.Module, tokenizer, prompt: str,
                 upsample: Callable[[Tensor], Tensor], taggers: dict[str, nn.Module] | None = None) -> None:
        self.spec = spec
        self.text_encoder = text_encoder.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.prompt = prompt
        self.upsample = upsample
        self.taggers: dict[str, nn.Module] = dict(taggers or {})
        self._cache: OrderedDict[str, Tensor] = OrderedDict()
        self.pinned = False
        self.last_prompts: list[str] = []

    # -- tags ------------------------------------------------------------------------------------------------------
    def tagger(self, which: Literal["dape", "ram"], device: torch.device) -> nn.Module:
        """The tagger (``dape``: RAM + DAPE's LoRA; ``ram``: RAM alone), loaded on first use, on ``device`` in the
        ``precision``."""
        tagger = self.taggers.get(which)
        if tagger is None:
            from ctsr.models.ram import load_tagger

            dape = self.spec.dape_weights if which == "dape" else None
            tagger = load_tagger(self.spec.ram_weights, dape, **{"antialias": self.spec.antialias,
                                                                   **self.spec.tagger})
            self.taggers[which] = tagger
        dtype = TAGGER_PRECISIONS.get(self.spec.precision) or (
            torch.float16 if device.type == "cuda" else torch.float32)
        if tagger.fc.weight.device != device or tagger.fc.weight.dtype != dtype:
            tagger.to(device=device, dtype=dtype)
        return tagger

    @torch.no_grad()
    def tags(self, images: Tensor, which: Literal["dape", "ram"] = "dape") -> list[list[str]]:
        """Tags of images (B, 3, H, W) in [0, 1] (already ×4 for an LR)."""
        return self.tagger(which, images.device).tag(images.float())

    def lr_prompts(self, x_lr: Tensor) -> list[str]:
        """OSEDiff's inference prompts of x_LR (B, 3, h, w) in [0, 1]: DAPE on the ×4 LR, ``template``."""
        with torch.no_grad():
            up = self.upsample(x_lr.float())
        which = "dape" if self.spec.dape_weights else "ram"
        return [self.spec.template.format(tags=join_tags(t), prompt=self.prompt) for t in self.tags(up, which)]

    def gt_prompts(self, x_gt: Tensor) -> list[str]:
        """OSEDiff's training prompts of ground truths (B, 3, H, W) in [0, 1]: ``train_tagger``, ``train_template``."""
        return [self.spec.train_template.format(tags=join_tags(t), prompt=self.prompt)
                for t in self.tags(x_gt, self.spec.train_tagger)]

    # -- embeddings ------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, prompts: list[str], device: torch.device) -> Tensor:
        """(B, 77, D) float32 on ``device``: CLIP embeddings, computed once per text (LRU cache)."""
        todo = list(dict.fromkeys(p for p in prompts if p not in self._cache))
        if todo:
            if next(self.text_encoder.parameters()).device != device:
                self.text_encoder.to(device)
            ids = self.tokenizer(todo, padding="max_length", max_length=self.tokenizer.model_max_length,
                                 truncation=True, return_tensors="pt").input_ids.to(device)
            out = self.text_encoder(ids)[0].float()
            for text, emb in zip(todo, out):
                self._cache[text] = emb
        for p in prompts:
            self._cache.move_to_end(p)
        context = torch.stack([self._cache[p].to(device) for p in prompts])
        while len(self._cache) > self.spec.cache_size:
            self._cache.popitem(last=False)
        return context

    # -- the generator's hook ----------------------------------------------------------------------------------------
    def update(self, generator: nn.Module, x_lr: Tensor) -> None:
        """Called by the generator for each LR batch it encodes: its contexts from the LR's tags, unless pinned."""
        if not self.pinned:
            self._use(generator, self.lr_prompts(x_lr), x_lr.device)

    def pin(self, generator: nn.Module, images: Tensor, source: Literal["lr", "gt"] = "lr") -> list[str]:
        """Fix the generator's contexts for the next passes from ``images`` (``lr``: an LR batch as
        :meth:`lr_prompts`; ``gt``: ground truths as :meth:`gt_prompts`) until :meth:`unpin`."""
        prompts = self.gt_prompts(images) if source == "gt" else self.lr_prompts(images)
        self._use(generator, prompts, images.device)
        self.pinned = True
        return prompts

    def unpin(self, generator: nn.Module) -> None:
        """Back to contexts from each LR batch; the generator keeps the last contexts until its next batch."""
        self.pinned = False

    def _use(self, generator: nn.Module, prompts: list[str], device: torch.device) -> None:
        self.last_prompts = prompts
        generator.use_context(self.encode(prompts, device))


def build_prompter(prompting: Prompting | None, prompts, prompt: str, upsample: Callable[[Tensor], Tensor]
                   ) -> PromptProvider | None:
    """The generator's provider for ``prompting`` (None for a fixed prompt), with its text encoder and tokenizer
    (``prompts``: its :class:`~ctsr.models.prompts.PromptEncoder`, before it is released)."""
    if prompting is None or prompting.mode == "fixed":
        return None
    return PromptProvider(prompting, prompts.text_encoder, prompts.tokenizer, prompt, upsample)



def configure_prompts(generator: nn.Module, mode: Literal["model", "fixed", "dape"] = "model",
                      ram_weights: str | None = None, dape_weights: str | None = None) -> PromptProvider | None:
    """Choose how a loaded model is prompted (``ctsr upscale`` / ``ctsr demo``), before its text encoder is
    released: ``model`` keeps what the model file records (a fixed prompt when it records none), ``fixed`` the
    fixed prompt, ``dape`` per-image DAPE tags; ``ram_weights`` / ``dape_weights`` override the recorded files."""
    check(mode in PROMPTINGS, "--prompting", f"one of {', '.join(PROMPTINGS)}; got {mode!r}")
    prompter = getattr(generator, "prompter", None)
    if mode == "fixed":
        generator.prompter = None
        generator.use_context(None)
        return None
    if mode == "dape" and prompter is None:
        stored = generator.config.get("prompting") or {}
        spec = Prompting.parse({**stored, "mode": "dape"})
        if generator.prompts.text_encoder is None:
            raise RuntimeError("configure_prompts: the text encoder was released; call it before Upscaler()")
        prompter = build_prompter(spec, generator.prompts, generator.config.get("prompt", ""), generator.upsample)
        generator.prompter = prompter
    if prompter is not None:
        if ram_weights is not None:
            prompter.spec.ram_weights = ram_weights
        if dape_weights is not None:
            prompter.spec.dape_weights = dape_weights or None
        if ram_weights is not None or dape_weights is not None:
            prompter.taggers.clear()
    return prompter
