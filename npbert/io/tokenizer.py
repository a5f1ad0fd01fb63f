"""Thin wrapper over `tokenizers`: ids, attention masks, token types, truncation that says so.

The checkpoint's tokenizer.json may carry its own padding/truncation (the GLUE checkpoints pad to a
fixed 128). We take its truncation length as the default limit but pad only to the longest sequence
of a batch: padding never changes unmasked outputs, and fixed padding wastes compute.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
from tokenizers import Tokenizer as _HFTokenizer

from npbert.errors import InputError, NpbertWarning, TokenizerError


@dataclasses.dataclass(frozen=True)
class Batch:
    input_ids: np.ndarray  # [B, T] int64
    attention_mask: np.ndarray  # [B, T] int64, 1 = real token
    token_type_ids: np.ndarray  # [B, T] int64
    truncated: np.ndarray  # [B] bool: this row lost tokens to max_length

    def __len__(self) -> int:
        return self.input_ids.shape[0]


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}


class Tokenizer:
    def __init__(self, hf: _HFTokenizer, max_length: int, pad_id: int, source: str = "tokenizer.json"):
        self._tok = hf
        self.max_length = int(max_length)
        self.pad_id = int(pad_id)
        self.source = source
        self._tok.no_padding()
        # Truncation to max_length, longest-first for pairs (HF's default strategy).
        self._tok.enable_truncation(self.max_length, strategy="longest_first")

    @classmethod
    def from_dir(cls, model_dir: str | Path, model_max_tokens: int | None = None) -> "Tokenizer":
        model_dir = Path(model_dir)
        path = model_dir / "tokenizer.json"
        if not path.is_file():
            raise TokenizerError(
                f"{path}: not found; npbert needs the fast-tokenizer file tokenizer.json "
                "(save it with transformers' tokenizer.save_pretrained)"
            )
        try:
            hf = _HFTokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises plain Exception subclasses
            raise TokenizerError(f"{path}: cannot be read by `tokenizers` ({e})") from None
        raw = _json(path)
        # The length sentence-transformers uses wins, then the tokenizer's own truncation, then the
        # tokenizer config's model_max_length; never more than the model's position table.
        candidates = [
            _json(model_dir / "sentence_bert_config.json").get("max_seq_length"),
            (raw.get("truncation") or {}).get("max_length"),
            _json(model_dir / "tokenizer_config.json").get("model_max_length"),
        ]
        limit = next((int(c) for c in candidates if isinstance(c, (int, float)) and 0 < c < 1e6), 512)
        if model_max_tokens is not None:
            limit = min(limit, int(model_max_tokens))
        pad = (raw.get("padding") or {}).get("pad_id")
        if pad is None:
            pad = hf.token_to_id("[PAD]") if hf.token_to_id("[PAD]") is not None else hf.token_to_id("<pad>") or 0
        return cls(hf, limit, pad, source=str(path))

    def encode(self, texts: Sequence[str], pairs: Sequence[str] | None = None, warn: bool = True) -> Batch:
        """Tokenize a batch (optionally of text pairs), padded to its longest row."""
        if isinstance(texts, str):
            raise InputError("texts must be a list of strings, not one string (wrap it: [text])")
        texts = list(texts)
        if not texts:
            raise InputError("no texts given; pass at least one non-empty string")
        if pairs is not None:
            pairs = list(pairs)
            if len(pairs) != len(texts):
                raise InputError(f"got {len(texts)} texts but {len(pairs)} pairs; they must match one to one")
        for i, t in enumerate(texts + (pairs or [])):
            if not isinstance(t, str):
                raise InputError(f"text {i} is {type(t).__name__}, not str")
            if not t.strip():
                raise InputError(f"text {i % len(texts)} is empty; give every input some text")
        items = list(zip(texts, pairs)) if pairs is not None else texts
        encs = self._tok.encode_batch(items)
        T = max(len(e.ids) for e in encs)
        B = len(encs)
        ids = np.full((B, T), self.pad_id, np.int64)
        mask = np.zeros((B, T), np.int64)
        types = np.zeros((B, T), np.int64)
        truncated = np.zeros(B, bool)
        for b, e in enumerate(encs):
            n = len(e.ids)
            ids[b, :n] = e.ids
            mask[b, :n] = 1
            types[b, :n] = e.type_ids
            truncated[b] = bool(e.overflowing)
        if warn and truncated.any():
            rows = np.flatnonzero(truncated)
            warnings.warn(
                f"{len(rows)} input(s) (rows {rows[:8].tolist()}{'...' if len(rows) > 8 else ''}) are longer than "
                f"{self.max_length} tokens and were truncated to fit the model",
                NpbertWarning,
                stacklevel=2,
            )
        return Batch(ids, mask, types, truncated)
