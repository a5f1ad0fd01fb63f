"""Model configuration: a frozen view of HF config.json whose field names are HF's own.

Unknown keys are kept in `extra`, never dropped, so a config round-trips.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from npbert.errors import ConfigError, UnsupportedModelError

# model_type -> the family npbert runs it as. RoBERTa and XLM-R share one code path.
SUPPORTED_MODEL_TYPES = {"bert": "bert", "roberta": "roberta", "xlm-roberta": "roberta", "mpnet": "mpnet"}

# architectures[0] -> the head npbert attaches.
HEADS = {
    "BertModel": "none",
    "RobertaModel": "none",
    "XLMRobertaModel": "none",
    "MPNetModel": "none",
    "BertForSequenceClassification": "sequence",
    "RobertaForSequenceClassification": "sequence",
    "XLMRobertaForSequenceClassification": "sequence",
    "MPNetForSequenceClassification": "sequence",
    "BertForTokenClassification": "token",
    "RobertaForTokenClassification": "token",
    "XLMRobertaForTokenClassification": "token",
    "MPNetForTokenClassification": "token",
    # Masked-LM checkpoints: npbert runs the encoder and ignores the LM head.
    "BertForMaskedLM": "none",
    "RobertaForMaskedLM": "none",
    "XLMRobertaForMaskedLM": "none",
    "MPNetForMaskedLM": "none",
    "BertForPreTraining": "none",
}

_REQUIRED = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")


@dataclasses.dataclass(frozen=True)
class BertConfig:
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    model_type: str = "bert"
    architectures: tuple[str, ...] = ("BertModel",)
    hidden_act: str = "gelu"
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    position_embedding_type: str = "absolute"
    id2label: dict[str, str] | None = None
    problem_type: str | None = None
    num_labels: int | None = None
    relative_attention_num_buckets: int = 32  # MPNet only
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config.json") -> "BertConfig":
        if not isinstance(d, dict):
            raise ConfigError(f"{source}: expected a JSON object, got {type(d).__name__}")
        missing = [k for k in _REQUIRED if k not in d]
        if missing:
            raise ConfigError(f"{source}: missing required keys {missing}; is this a BERT-family config.json?")
        fields = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        kw = {k: v for k, v in d.items() if k in fields}
        extra = {k: v for k, v in d.items() if k not in fields}
        if "architectures" in kw:
            kw["architectures"] = tuple(kw["architectures"] or ("BertModel",))
        if kw.get("id2label") is not None:
            kw["id2label"] = {str(k): str(v) for k, v in kw["id2label"].items()}
        try:
            cfg = cls(**kw, extra=extra)
        except TypeError as e:  # pragma: no cover - defensive
            raise ConfigError(f"{source}: {e}") from None
        cfg.validate(source)
        return cfg

    @classmethod
    def from_file(cls, path: str | Path) -> "BertConfig":
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: not found; a model directory needs the HF config.json next to its weights")
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path}: not valid JSON ({e}); re-download or re-export the checkpoint") from None
        return cls.from_dict(d, source=str(path))

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        d["architectures"] = list(self.architectures)
        d.update(self.extra)
        return d

    def validate(self, source: str = "config.json") -> None:
        for k in _REQUIRED:
            v = getattr(self, k)
            if not isinstance(v, int) or v <= 0:
                raise ConfigError(f"{source}: {k} must be a positive integer, got {v!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"{source}: hidden_size {self.hidden_size} is not divisible by num_attention_heads "
                f"{self.num_attention_heads}"
            )
        if self.model_type not in SUPPORTED_MODEL_TYPES:
            raise UnsupportedModelError(
                f"{source}: model_type {self.model_type!r} is not supported; npbert runs "
                f"{sorted(SUPPORTED_MODEL_TYPES)}"
            )
        if self.family != "mpnet" and self.position_embedding_type != "absolute":
            raise UnsupportedModelError(
                f"{source}: position_embedding_type {self.position_embedding_type!r} is not supported "
                "(only 'absolute' for BERT/RoBERTa); use a checkpoint with absolute position embeddings"
            )
        if self.family == "mpnet":
            # HF's MPNet hard-codes both, whatever config.json says: MPNetEmbeddings(padding_idx=1) and
            # MPNetEncoder.compute_position_bias(num_buckets=32). Another value would mean another model.
            if self.pad_token_id != 1:
                raise UnsupportedModelError(
                    f"{source}: MPNet with pad_token_id {self.pad_token_id} is not supported; HF MPNet numbers "
                    "positions from padding_idx 1 regardless, so set pad_token_id to 1 (and pad with id 1)"
                )
            if self.relative_attention_num_buckets < 32:
                raise UnsupportedModelError(
                    f"{source}: MPNet relative_attention_num_buckets {self.relative_attention_num_buckets} < 32; "
                    "HF MPNet always buckets relative positions into 32, so the table needs at least 32 rows"
                )
        if self.hidden_act not in ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu"):
            raise UnsupportedModelError(f"{source}: hidden_act {self.hidden_act!r} is not supported")
        if self.architecture not in HEADS:
            raise UnsupportedModelError(
                f"{source}: architecture {self.architecture!r} is not supported; npbert runs {sorted(HEADS)}"
            )

    @property
    def family(self) -> str:
        return SUPPORTED_MODEL_TYPES[self.model_type]

    @property
    def architecture(self) -> str:
        return self.architectures[0]

    @property
    def head(self) -> str:
        return HEADS[self.architecture]

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def n_labels(self) -> int:
        if self.num_labels is not None:
            return int(self.num_labels)
        if self.id2label:
            return len(self.id2label)
        return 2

    @property
    def is_regression(self) -> bool:
        return self.problem_type == "regression" or (self.problem_type is None and self.n_labels == 1)

    @property
    def position_offset(self) -> int:
        """RoBERTa/XLM-R/MPNet number positions from pad_token_id + 1; BERT from 0."""
        return self.pad_token_id + 1 if self.family in ("roberta", "mpnet") else 0

    @property
    def max_tokens(self) -> int:
        """Longest sequence the position table can index."""
        return self.max_position_embeddings - self.position_offset
