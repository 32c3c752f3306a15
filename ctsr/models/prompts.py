"""Prompt embeddings through the CLIP text encoder, computed once per text and cached (never per step).

The text encoder lives on the CPU outside the module tree (it is not trained, not checkpointed and never moved
to the GPU); only the (1, 77, D) embeddings it produced are kept, as buffers of the modules that use them.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn


class PromptEncoder:
    """``encode(text) -> (1, 77, D)``, cached by text. ``release()`` frees the text encoder once done."""

    def __init__(self, text_encoder: nn.Module, tokenizer) -> None:
        self.text_encoder = text_encoder.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self._cache: dict[str, Tensor] = {}

    @torch.no_grad()
    def encode(self, text: str) -> Tensor:
        if text not in self._cache:
            if self.text_encoder is None:
                raise RuntimeError(f"the text encoder was released before encoding {text!r}")
            ids = self.tokenizer(
                [text], padding="max_length", max_length=self.tokenizer.model_max_length, truncation=True,
                return_tensors="pt",
            ).input_ids
            self._cache[text] = self.text_encoder(ids)[0].float()
        return self._cache[text]

    def release(self) -> None:
        self.text_encoder = None
