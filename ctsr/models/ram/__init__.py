"""RAM / DAPE, the image tagger that gives OSEDiff its per-image prompts (written for this project).

OSEDiff (github.com/cswry/OSEDiff) conditions its UNet on the CLIP embedding of per-image tags: ``test_osediff.py``
tags the ×4-upscaled LR with **DAPE** — RAM (Recognize Anything, Swin-L, github.com/xinyu1205/recognize-anything)
with LoRA adapters fine-tuned on degraded inputs (SeeSR, github.com/cswry/SeeSR) — and prompts
``"{tags}, {user prompt},"``; ``train_osediff.py`` tags the ground truth with plain RAM and prompts ``"{tags}"``.

* :class:`RAMTagger` — Swin image encoder (:mod:`ctsr.models.ram.swin`) + ``image_proj`` + the tagging head (a
  2-layer BERT with cross-attention only, queried by one learned embedding per tag) + ``fc``: logits (B, n_tags);
  a tag is kept where sigmoid(logit) > its threshold (RAM's ``ram_tag_list_threshold.txt``). Its state-dict names
  are the official ones (``visual_encoder.*``, ``image_proj``, ``label_embed``, ``wordvec_proj``, ``tagging_head.*``,
  ``fc``); the official model's caption branch (``tag_encoder``, ``text_decoder``) is not used to tag and not built.
* :func:`load_tagger` — the released files, weights-only and strictly: ``ram_swin_large_14m.pth`` (RAM) and
  optionally ``DAPE.pth`` (only the LoRA tensors ``*.lora_A`` / ``*.lora_B``, laid over RAM as OSEDiff's
  ``ram(pretrained, pretrained_condition)`` does). The LoRAs (loralib, r = 8, alpha 1: scale 1/8) are folded into
  the weights exactly as loralib does when the official model is put in eval mode — including one quirk: the
  tagging head's layers share their weights with the first layers of ``tag_encoder``, so loralib also adds
  ``tag_encoder``'s query/key LoRA of those layers (untrained in DAPE.pth, B = 0: nothing) to them.
* :func:`preprocess` — OSEDiff's ``ram_transforms``: resize to 384² (bilinear; ``antialias=False`` is what its pinned
  torchvision 0.15 did on tensors, newer torchvision defaults to True), ImageNet normalisation.

The tag list and thresholds (``data/``) are RAM's files, Apache-2.0 (``data/NOTICE``). Parity with the official
code: tests/test_dape.py on fixtures made by tests/fixtures/dape/make_fixtures.py.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ctsr.errors import ConfigError, MissingWeightsError, shown
from ctsr.models.ram.swin import SwinEncoder

__all__ = ["RAMTagger", "TaggingHead", "SwinEncoder", "load_tagger", "read_ram_state", "preprocess", "TAG_LIST",
           "TAG_THRESHOLDS", "RAM_FILE", "RAM_URL", "RAM_PAGE", "DAPE_FILE", "DAPE_URL", "DAPE_PAGE", "IGNORED"]

DATA = Path(__file__).parent / "data"
TAG_LIST = DATA / "ram_tag_list.txt"
TAG_THRESHOLDS = DATA / "ram_tag_list_threshold.txt"
RAM_FILE = "ram_swin_large_14m.pth"
RAM_URL = "https://huggingface.co/spaces/xinyu1205/recognize-anything/blob/main/ram_swin_large_14m.pth"
RAM_PAGE = "https://github.com/xinyu1205/recognize-anything"
DAPE_FILE = "DAPE.pth"
DAPE_URL = "https://drive.google.com/file/d/1KIV6VewwO2eDC9g4Gcvgm-a0LDI7Lmwm/view"
DAPE_PAGE = "https://github.com/cswry/OSEDiff (README, 'Download Models')"
EMBED_WIDTH = 512  # RAM's label/image embedding width (hard-coded in the official model)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# parts of the official model that tagging does not run (the Tag2Text caption branch): read and ignored
IGNORED = ("tag_encoder.", "text_decoder.")
LORA_ALPHA = 1.0  # loralib's default, which the official LoRA layers keep: scale = 1 / r


# -- the tagging head: BERT layers with cross-attention only (official mode='tagging') -------------------------------
class _Attention(nn.Module):
    def __init__(self, hidden: int, context: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(context, hidden)
        self.value = nn.Linear(context, hidden)

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        def split(t: Tensor) -> Tensor:
            return t.view(*t.shape[:2], self.heads, -1).permute(0, 2, 1, 3)

        q, k, v = split(self.query(x)), split(self.key(context)), split(self.value(context))
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])  # every image token attends: no mask
        out = scores.softmax(dim=-1) @ v
        return out.permute(0, 2, 1, 3).reshape(*x.shape[:2], -1)


class _Residual(nn.Module):
    """``dense`` then LayerNorm(· + input): BERT's SelfOutput / Output."""

    def __init__(self, n_in: int, n_out: int, eps: float) -> None:
        super().__init__()
        self.dense = nn.Linear(n_in, n_out)
        self.LayerNorm = nn.LayerNorm(n_out, eps=eps)

    def forward(self, x: Tensor, residual: Tensor) -> Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class _CrossAttention(nn.Module):
    def __init__(self, hidden: int, context: int, heads: int, eps: float) -> None:
        super().__init__()
        self.self = _Attention(hidden, context, heads)
        self.output = _Residual(hidden, hidden, eps)

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        return self.output(self.self(x, context), x)


class _Intermediate(nn.Module):
    def __init__(self, hidden: int, intermediate: int) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden, intermediate)

    def forward(self, x: Tensor) -> Tensor:
        return F.gelu(self.dense(x))  # BERT's 'gelu': the exact erf form


class _Layer(nn.Module):
    def __init__(self, hidden: int, intermediate: int, context: int, heads: int, eps: float) -> None:
        super().__init__()
        self.crossattention = _CrossAttention(hidden, context, heads, eps)
        self.intermediate = _Intermediate(hidden, intermediate)
        self.output = _Residual(intermediate, hidden, eps)

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        x = self.crossattention(x, context)
        return self.output(self.intermediate(x), x)


class _Layers(nn.Module):
    def __init__(self, layers: list[_Layer]) -> None:
        super().__init__()
        self.layer = nn.ModuleList(layers)


class TaggingHead(nn.Module):
    """Query2Label-style decoder: tag queries (B, C, hidden) cross-attend to image tokens (B, N, 512), no
    self-attention (RAM's ``q2l_config.json``: hidden 768, 2 layers, 4 heads, intermediate 3072)."""

    def __init__(self, hidden_size: int = 768, intermediate_size: int = 3072, num_attention_heads: int = 4,
                 num_hidden_layers: int = 2, layer_norm_eps: float = 1e-12, context_width: int = EMBED_WIDTH) -> None:
        super().__init__()
        if hidden_size % num_attention_heads:
            raise ConfigError(f"tagger: hidden_size {hidden_size} is not a multiple of the {num_attention_heads} heads")
        self.encoder = _Layers([_Layer(hidden_size, intermediate_size, context_width, num_attention_heads,
                                       layer_norm_eps) for _ in range(num_hidden_layers)])

    def forward(self, queries: Tensor, image_embeds: Tensor) -> Tensor:
        x = queries
        for layer in self.encoder.layer:
            x = layer(x, image_embeds)
        return x


# -- the tagger ------------------------------------------------------------------------------------------------------
def read_lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def preprocess(images: Tensor, size: int = 384, antialias: bool = False) -> Tensor:
    """OSEDiff's ``ram_transforms``: (B, 3, H, W) in [0, 1] → bilinear resize to (size, size) → ImageNet
    normalisation (float32)."""
    x = images.float()
    if tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=antialias)
    mean = x.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = x.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


class RAMTagger(nn.Module):
    """RAM's image tagger: images → tag logits and tags. Defaults: the released RAM Swin-L 384 (4585 tags).

    Args:
        image_size, patch_size, embed_dim, depths, num_heads, window_size: the Swin encoder
            (:class:`~ctsr.models.ram.swin.SwinEncoder`).
        hidden_size, intermediate_size, num_attention_heads, num_hidden_layers, layer_norm_eps: the tagging head.
        tag_list, thresholds: one tag per line / one threshold per line (default: RAM's files, shipped in
            ``ctsr/models/ram/data``).
        antialias: the resize to ``image_size`` (see :func:`preprocess`).
    """

    def __init__(self, image_size: int = 384, patch_size: int = 4, embed_dim: int = 192,
                 depths: Sequence[int] = (2, 2, 18, 2), num_heads: Sequence[int] = (6, 12, 24, 48),
                 window_size: int = 12, hidden_size: int = 768, intermediate_size: int = 3072,
                 num_attention_heads: int = 4, num_hidden_layers: int = 2, layer_norm_eps: float = 1e-12,
                 tag_list: str | Path = TAG_LIST, thresholds: str | Path = TAG_THRESHOLDS,
                 antialias: bool = False) -> None:
        super().__init__()
        self.tags = read_lines(Path(tag_list))
        values = [float(v) for v in read_lines(Path(thresholds)) if v.strip()]
        if len(values) != len(self.tags):
            raise ConfigError(f"tagger: {len(self.tags)} tags in '{tag_list}' but {len(values)} thresholds in "
                              f"'{thresholds}'")
        self.image_size, self.antialias = image_size, antialias
        # registered in the official order (its state dict lists them so)
        self.visual_encoder = SwinEncoder(image_size, patch_size, embed_dim, depths, num_heads, window_size)
        self.tagging_head = TaggingHead(hidden_size, intermediate_size, num_attention_heads, num_hidden_layers,
                                        layer_norm_eps)
        self.label_embed = nn.Parameter(torch.zeros(len(self.tags), EMBED_WIDTH))
        self.wordvec_proj = nn.Linear(EMBED_WIDTH, hidden_size) if hidden_size != EMBED_WIDTH else nn.Identity()
        self.fc = nn.Linear(hidden_size, 1)
        self.image_proj = nn.Linear(self.visual_encoder.num_features, EMBED_WIDTH)
        # a plain float32 tensor, not a buffer: `.half()` must not round the thresholds (the official keeps them so)
        self.class_threshold = torch.tensor(values, dtype=torch.float32)

    def train(self, mode: bool = True) -> "RAMTagger":
        return super().train(False)  # inference only

    @property
    def dtype(self) -> torch.dtype:
        return self.fc.weight.dtype

    def forward(self, x: Tensor) -> Tensor:
        """Logits (B, n_tags) of normalised images x (B, 3, S, S) (:func:`preprocess`), in the model's dtype."""
        image_embeds = self.image_proj(self.visual_encoder(x.to(self.dtype)))
        queries = F.relu(self.wordvec_proj(self.label_embed)).unsqueeze(0).expand(x.shape[0], -1, -1)
        return self.fc(self.tagging_head(queries, image_embeds)).squeeze(-1)

    def selected(self, logits: Tensor) -> Tensor:
        """(B, n_tags) bool: sigmoid(logit) above the tag's threshold (compared in float32, as the official)."""
        return torch.sigmoid(logits) > self.class_threshold.to(logits.device)

    def tag_names(self, selected: Tensor) -> list[list[str]]:
        return [[self.tags[i] for i in row.nonzero().flatten().tolist()] for row in selected.cpu()]

    @torch.no_grad()
    def tag(self, images: Tensor) -> list[list[str]]:
        """The tags of images (B, 3, H, W) in [0, 1], in tag-list order (the official ``', '.join`` order)."""
        x = preprocess(images, self.image_size, self.antialias)
        return self.tag_names(self.selected(self(x)))


# -- the released files ----------------------------------------------------------------------------------------------
def _read(path: Path, what: str) -> dict[str, Tensor]:
    from ctsr.checkpoints import load_checkpoint, read_safetensors

    if path.suffix == ".safetensors":
        return read_safetensors(path, what)[0]
    state = load_checkpoint(path, what)  # torch.load(weights_only=True): a pickle that would run code is refused
    for key in ("model", "params", "state_dict"):  # RAM: {'model': …}; BasicSR-style saves: {'params': …}
        if isinstance(state.get(key), dict):
            state = state[key]
            break
    if not all(isinstance(v, Tensor) for v in state.values()):
        raise ConfigError(f"{what}: '{shown(path)}' is not a state dict (a mapping of names to tensors)")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


def _lora_delta(a: Tensor, b: Tensor, out_features: int) -> Tensor:
    """ΔW·scale of a loralib layer from its (lora_A, lora_B), computed as loralib's eval-mode merge does.

    ``Linear``: A (r, in), B (out, r): ΔW = B @ A. ``MergedLinear`` (the Swin ``qkv``, LoRA on q and v only):
    A (2r, in), B (2·out/3, r): the two blocks by a grouped conv1d, zero rows for k.
    """
    if b.shape[0] == out_features:  # lora.Linear
        r = a.shape[0]
        return (b @ a) * (LORA_ALPHA / r)
    groups = a.shape[0] // b.shape[1]  # MergedLinear(enable_lora=[True, False, True])
    if groups != 2 or out_features % 3 or b.shape[0] != 2 * out_features // 3:
        raise ConfigError(f"a LoRA of shapes {tuple(a.shape)}, {tuple(b.shape)} does not fit a layer of "
                          f"{out_features} outputs")
    r = b.shape[1]
    delta = F.conv1d(a.unsqueeze(0), b.unsqueeze(-1), groups=groups).squeeze(0)  # (2·out/3, in)
    full = delta.new_zeros((out_features, delta.shape[1]))
    third = out_features // 3
    full[:third], full[2 * third:] = delta[:third], delta[third:]
    return full * (LORA_ALPHA / r)


def fold_lora(state: dict[str, Tensor], head_layers: int) -> dict[str, Tensor]:
    """Fold every ``X.lora_A`` / ``X.lora_B`` pair into ``X.weight`` and drop them (loralib's eval-mode merge).

    The official tagging head's layers ``i < head_layers`` share their weights with ``tag_encoder``'s layer ``i``
    (``tie_encoder_decoder_weights``): loralib merges the encoder's cross-attention query/key LoRA into the shared
    tensor first, then the head's own.
    """
    state = dict(state)
    pairs = sorted({k[: -len(".lora_A")] for k in state if k.endswith(".lora_A")})
    for stem in pairs:
        if stem + ".lora_B" not in state:
            raise ConfigError(f"LoRA '{stem}': lora_A without lora_B")
    for stem in pairs:
        target = stem + ".weight"
        if stem.startswith("tag_encoder.encoder.layer."):
            parts = stem.split(".")  # tag_encoder.encoder.layer.<i>.crossattention.self.<query|key>
            if int(parts[3]) < head_layers and parts[4] == "crossattention":
                target = "tagging_head." + stem[len("tag_encoder."):] + ".weight"
        if target not in state:
            continue  # a LoRA of a layer that tagging does not use (the caption branch)
        w = state[target]
        state[target] = w + _lora_delta(state[stem + ".lora_A"].to(w.dtype), state[stem + ".lora_B"].to(w.dtype),
                                        w.shape[0])
    return {k: v for k, v in state.items() if ".lora_" not in k}


def read_ram_state(ram: str | Path, dape: str | Path | None = None, head_layers: int = 2) -> dict[str, Tensor]:
    """The tagger's state dict from the release files (official names), LoRA folded in, the caption branch and the
    derived buffers (``relative_position_index``, ``attn_mask``) dropped, as the official loader does."""
    state = {}  # float32 throughout: the official model is built in float32, loads, then merges its LoRA
    for key, value in _read(Path(ram), "RAM weights").items():
        value = value.float() if value.is_floating_point() else value
        if key.endswith((".relative_position_index", ".attn_mask")):
            continue
        state[key.replace("vision_multi", "tagging_head")] = value  # the official loader's rename
    if dape is not None:
        lora = _read(Path(dape), "DAPE weights")
        other = [k for k in lora if ".lora_" not in k]
        if other:
            raise ConfigError(f"DAPE weights: '{shown(dape)}' holds {len(other)} tensors that are not LoRA weights "
                              f"(e.g. {other[0]}); DAPE.pth holds only *.lora_A / *.lora_B")
        state.update({k: v.float() for k, v in lora.items()})
    return {k: v for k, v in fold_lora(state, head_layers).items() if not k.startswith(IGNORED)}


def _require(path: Path, what: str, url: str, page: str) -> Path:
    if not path.is_file():
        raise MissingWeightsError(f"{what} '{shown(path)}' not found: download {path.name} from {url} (release page "
                                  f"{page}) into '{shown(path.parent)}'")
    return path


def load_tagger(ram: str | Path = Path("weights") / RAM_FILE, dape: str | Path | None = Path("weights") / DAPE_FILE,
                **config) -> RAMTagger:
    """:class:`RAMTagger` with the released weights, strictly: every tensor the tagger needs, none unknown besides
    the caption branch (``tag_encoder.*``, ``text_decoder.*``), every shape equal, or one line naming the file.

    ram: ``ram_swin_large_14m.pth``; dape: ``DAPE.pth`` (its LoRA laid over RAM), or None for plain RAM (what
    OSEDiff's training tags the ground truth with). ``config``: :class:`RAMTagger` arguments (tests: reduced sizes).
    """
    ram_path = _require(Path(ram).expanduser(), "RAM weights", RAM_URL, RAM_PAGE)
    dape_path = _require(Path(dape).expanduser(), "DAPE weights", DAPE_URL, DAPE_PAGE) if dape is not None else None
    tagger = RAMTagger(**config)
    state = read_ram_state(ram_path, dape_path, len(tagger.tagging_head.encoder.layer))
    own = tagger.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        parts = [f"{name} {len(keys)} (e.g. {keys[0]})" for name, keys in
                 (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if keys]
        files = f"'{shown(ram_path)}'" + (f" + '{shown(dape_path)}'" if dape_path else "")
        raise ConfigError(f"tagger: {files} does not match the RAM Swin-L tagger: " + "; ".join(parts))
    tagger.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return tagger.eval()
