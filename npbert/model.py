"""FP32 forward of BERT-family encoders: embeddings, encoder layers, pooler, heads, pooling.

The forward is written once. Every linear layer, attention block, residual sum and LayerNorm goes
through an `Executor`, and every tensor that a quantized model would quantize passes a named
`site`. The FP32 executor here makes all of them plain NumPy; `npbert.qmodel` supplies executors
that record statistics (calibration), fake-quantize (float simulation) or run integer arithmetic,
so the quantized model cannot drift structurally from the FP32 one.

Names are HF checkpoint names with the base-model prefix removed (`encoder.layer.3.output.dense`).
Shapes: B batch, T tokens, C hidden, h heads, d head size, I intermediate, L labels.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from npbert import ops
from npbert.config import BertConfig
from npbert.errors import InputError, UnsupportedModelError, WeightsError
from npbert.io.tokenizer import Batch, Tokenizer
from npbert.io.weights import load_checkpoint
from npbert.kernels import fused

_BASE_PREFIXES = ("bert.", "roberta.", "mpnet.")
# Tensors a checkpoint may carry that npbert does not run: buffers and pre-training / LM heads.
_IGNORED_PREFIXES = ("cls.", "lm_head.", "embeddings.position_ids", "embeddings.token_type_ids")


# ----------------------------------------------------------------------------------------- names


def layer_prefix(i: int) -> str:
    return f"encoder.layer.{i}"


QKV_PROJECTIONS = ("query", "key", "value")  # the attention projections, prefix.attention.self.{name}


def linear_names(cfg: BertConfig) -> list[str]:
    """Every linear layer of the encoder and head, in execution order."""
    names = []
    for i in range(cfg.num_hidden_layers):
        p = layer_prefix(i)
        names += [f"{p}.attention.self.{n}" for n in QKV_PROJECTIONS]
        names += [f"{p}.attention.output.dense", f"{p}.intermediate.dense", f"{p}.output.dense"]
    names += head_linear_names(cfg)
    return names


def head_linear_names(cfg: BertConfig) -> list[str]:
    if cfg.head == "sequence":
        if cfg.family == "bert":
            return ["pooler.dense", "classifier"]
        return ["classifier.dense", "classifier.out_proj"]
    if cfg.head == "token":
        return ["classifier"]
    return []


def expected_shapes(cfg: BertConfig, with_pooler: bool) -> dict[str, tuple[int, ...]]:
    """Canonical tensor name -> shape, from config.json alone."""
    C, I, L = cfg.hidden_size, cfg.intermediate_size, cfg.n_labels
    s: dict[str, tuple[int, ...]] = {
        "embeddings.word_embeddings.weight": (cfg.vocab_size, C),
        "embeddings.position_embeddings.weight": (cfg.max_position_embeddings, C),
        "embeddings.LayerNorm.weight": (C,),
        "embeddings.LayerNorm.bias": (C,),
    }
    if cfg.family != "mpnet":
        s["embeddings.token_type_embeddings.weight"] = (cfg.type_vocab_size, C)
    else:
        s["encoder.relative_attention_bias.weight"] = (cfg.relative_attention_num_buckets, cfg.num_attention_heads)
    for i in range(cfg.num_hidden_layers):
        p = layer_prefix(i)
        for n in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"):
            s[f"{p}.{n}.weight"], s[f"{p}.{n}.bias"] = (C, C), (C,)
        s[f"{p}.intermediate.dense.weight"], s[f"{p}.intermediate.dense.bias"] = (I, C), (I,)
        s[f"{p}.output.dense.weight"], s[f"{p}.output.dense.bias"] = (C, I), (C,)
        for n in ("attention.output.LayerNorm", "output.LayerNorm"):
            s[f"{p}.{n}.weight"], s[f"{p}.{n}.bias"] = (C,), (C,)
    if with_pooler or (cfg.head == "sequence" and cfg.family == "bert"):
        s["pooler.dense.weight"], s["pooler.dense.bias"] = (C, C), (C,)
    if cfg.head == "sequence" and cfg.family != "bert":
        s["classifier.dense.weight"], s["classifier.dense.bias"] = (C, C), (C,)
        s["classifier.out_proj.weight"], s["classifier.out_proj.bias"] = (L, C), (L,)
    elif cfg.head in ("sequence", "token"):
        s["classifier.weight"], s["classifier.bias"] = (L, C), (L,)
    return s


# MPNet checkpoints name the same modules differently; map them onto BERT's canonical names so the
# forward, the quantization sites and the CLI speak one vocabulary.
_MPNET_RENAMES = (
    (".attention.attn.q.", ".attention.self.query."),
    (".attention.attn.k.", ".attention.self.key."),
    (".attention.attn.v.", ".attention.self.value."),
    (".attention.attn.o.", ".attention.output.dense."),
    (".attention.LayerNorm.", ".attention.output.LayerNorm."),
)


def canonical_name(key: str, family: str) -> str:
    for prefix in _BASE_PREFIXES:
        if key.startswith(prefix):
            key = key[len(prefix) :]
            break
    if family == "mpnet":
        for old, new in _MPNET_RENAMES:
            key = key.replace(old, new)
    return key


def canonicalize(raw: dict[str, np.ndarray], cfg: BertConfig, source: str) -> dict[str, np.ndarray]:
    """Rename checkpoint keys to canonical names; check the set and every shape against config.json."""
    params: dict[str, np.ndarray] = {}
    for key, arr in raw.items():
        name = canonical_name(key, cfg.family)
        if name.startswith(_IGNORED_PREFIXES):
            continue
        if name in params:
            raise WeightsError(f"{source}: tensor {key!r} appears twice (with and without a model prefix)")
        params[name] = arr
    want = expected_shapes(cfg, with_pooler="pooler.dense.weight" in params)
    missing = sorted(want.keys() - params.keys())
    if missing:
        raise WeightsError(
            f"{source}: {len(missing)} tensor(s) that config.json ({cfg.architecture}, "
            f"{cfg.num_hidden_layers} layers) requires are missing, e.g. {missing[:4]}; the checkpoint is "
            "incomplete or does not match its config"
        )
    extra = sorted(params.keys() - want.keys())
    if extra:
        raise WeightsError(
            f"{source}: {len(extra)} unexpected tensor(s), e.g. {extra[:4]}; config.json declares "
            f"{cfg.architecture} with {cfg.num_hidden_layers} layers: does the config belong to these weights?"
        )
    for name, shape in want.items():
        got = tuple(params[name].shape)
        if got != shape:
            raise WeightsError(f"{source}: tensor {name!r} has shape {got}, config.json implies {shape}")
        if params[name].dtype != np.float32:
            raise WeightsError(f"{source}: tensor {name!r} has dtype {params[name].dtype}, expected a float type")
    return params


# ------------------------------------------------------------------------------------- executor


class Executor:
    """FP32 execution of the forward's named operations. Subclasses override the hooks.

    Values that flow between hooks are float32 arrays here; quantized executors may pass their own
    tensor types, so the forward only reads values back through `f()` (to float) where it needs math.
    """

    # Fused float kernels (npbert.kernels.fused) in parallel? Not next to BLAS GEMMs: OpenBLAS's and
    # numba's spinning worker pools then fight over the cores (fused.py, PARALLEL_NOTE).
    PARALLEL_FLOAT_KERNELS = False

    def __init__(self, params: dict[str, np.ndarray], cfg: BertConfig):
        self.params = params
        self.cfg = cfg
        self.mask: np.ndarray | None = None

    def begin(self, attention_mask: np.ndarray) -> None:
        """Called once per forward: [B, T] mask of real tokens (statistics must skip padding)."""
        self.mask = attention_mask

    def f(self, x):
        """A value as float32."""
        return x

    def word_rows(self, ids: np.ndarray) -> np.ndarray | None:
        """[B, T] -> [B, T, C] word-embedding rows, or None: read params' float table."""
        return None

    def site(self, name: str, x):
        """A named quantization site: identity in FP32."""
        return x

    def linear(self, name: str, x, in_site: str, act: str | None = None):
        """[..., K] -> [..., N] with params[name.weight / name.bias], then the activation `act` (a
        config hidden_act name, or None) fused in; `in_site` names the input tensor."""
        y = ops.linear(self.f(x), self.params[name + ".weight"], self.params[name + ".bias"])
        return y if act is None else fused.activation(act, y, self.PARALLEL_FLOAT_KERNELS)

    def linear_site(self, name: str, x, in_site: str, out_site: str, act: str | None = None):
        """site(out_site, linear(...)): a linear whose output is itself a named site (executors may fuse
        the two)."""
        return self.site(out_site, self.linear(name, x, in_site, act))

    def qkv(self, prefix: str, x, in_site: str):
        """The attention's query, key and value projections of x [B, T, C]: the values of sites
        prefix.{query,key,value}.out (executors may run the three as one GEMM)."""
        return tuple(self.linear_site(f"{prefix}.{n}", x, in_site, f"{prefix}.{n}.out") for n in QKV_PROJECTIONS)

    def attention(self, prefix: str, q, k, v, bias: np.ndarray):
        """q, k, v [B, T, C] (values) -> context [B, T, C] as float32."""
        h = self.cfg.num_attention_heads
        qh, kh, vh = (ops.split_heads(self.f(t), h) for t in (q, k, v))  # [B, h, T, d]
        scores = qh @ kh.transpose(0, 1, 3, 2) * np.float32(1.0 / np.sqrt(qh.shape[-1])) + bias  # [B, h, T, T]
        return ops.merge_heads(fused.softmax_rows(scores, self.PARALLEL_FLOAT_KERNELS) @ vh)

    def add(self, name: str, a, b):
        """A residual sum, itself a site."""
        return self.site(name, self.f(a) + self.f(b))

    def layer_norm(self, name: str, x):
        y = fused.layer_norm(self.f(x), self.params[name + ".weight"], self.params[name + ".bias"], self.cfg.layer_norm_eps,
                             self.PARALLEL_FLOAT_KERNELS)
        return self.site(name + ".out", y)

    def buffer(self, name: str, shape: tuple, dtype) -> np.ndarray | None:
        """A reusable array for value `name`, or None (allocate a fresh one). Executors that keep buffers
        return one only for values dead before the same name of the next layer is produced."""
        return None

    def layer(self, prefix: str, x, in_site: str, bias: np.ndarray):
        """An encoder layer: encoder_layer's hooks, one by one (executors may run a whole layer at once)."""
        return encoder_layer(self, prefix, x, in_site, bias)

    def add_layer_norm(self, add_name: str, ln_name: str, a, b):
        """layer_norm(add(a, b)), the residual sum and its LayerNorm in one pass. Both sites still see
        their values; if the sum's site changes it (a quantizer), the LayerNorm reads the changed sum."""
        fa, fb = self.f(a), self.f(b)
        s, y = fused.add_layer_norm(fa, fb, self.params[ln_name + ".weight"], self.params[ln_name + ".bias"],
                                    self.cfg.layer_norm_eps, self.PARALLEL_FLOAT_KERNELS,
                                    out_sum=self.buffer(add_name, np.shape(fa), np.float32),
                                    out=self.buffer(ln_name + ".out", np.shape(fa), np.float32))
        s_site = self.site(add_name, s)
        if s_site is not s:
            return self.layer_norm(ln_name, s_site)
        return self.site(ln_name + ".out", y)


# ------------------------------------------------------------------------------------- forward


def position_ids(cfg: BertConfig, input_ids: np.ndarray) -> np.ndarray:
    """[B, T] -> [B, T]. BERT: 0..T-1. RoBERTa/MPNet: count real tokens from pad_token_id + 1, pads get pad."""
    B, T = input_ids.shape
    if cfg.position_offset == 0:
        return np.broadcast_to(np.arange(T, dtype=np.int64), (B, T))
    real = (input_ids != cfg.pad_token_id).astype(np.int64)
    return np.cumsum(real, axis=1) * real + cfg.pad_token_id


def relative_position_bucket(relative_position: np.ndarray, num_buckets: int, max_distance: int = 128) -> np.ndarray:
    """MPNet / T5 bidirectional buckets: half for each sign, exact below num_buckets/4, log-spaced above.

    [...] int key - query -> [...] int64 bucket. The log is taken in float32 with a float32 divisor,
    as HF's torch code computes it (a float64 divisor could round a boundary distance differently).
    """
    n = -relative_position
    num_buckets //= 2
    ret = (n < 0).astype(np.int64) * num_buckets
    n = np.abs(n)
    max_exact = num_buckets // 2
    is_small = n < max_exact
    large = max_exact + (
        np.log(np.maximum(n, 1).astype(np.float32) / np.float32(max_exact))  # n = 0 is small: never used
        / np.float32(np.log(max_distance / max_exact))
        * np.float32(num_buckets - max_exact)
    ).astype(np.int64)
    large = np.minimum(large, num_buckets - 1)
    return ret + np.where(is_small, n, large)


# HF's MPNetEncoder.compute_position_bias buckets with its default num_buckets=32 whatever config.json
# says; the table may be larger (rows >= 32 unused), never smaller (BertConfig.validate checks).
MPNET_POSITION_BUCKETS = 32


def attention_bias(params: dict, cfg: BertConfig, attention_mask: np.ndarray) -> np.ndarray:
    """[B, T] -> additive bias broadcastable to [B, h, T, T]: key padding, plus MPNet's relative bias."""
    bias = ops.mask_bias(attention_mask)  # [B, 1, 1, T]
    if cfg.family == "mpnet":
        T = attention_mask.shape[1]
        pos = np.arange(T, dtype=np.int64)
        rel = pos[None, :] - pos[:, None]  # [T, T] key - query
        buckets = relative_position_bucket(rel, MPNET_POSITION_BUCKETS)  # [T, T]
        rel_bias = params["encoder.relative_attention_bias.weight"][buckets]  # [T, T, h]
        bias = bias + rel_bias.transpose(2, 0, 1)[None]  # [B, h, T, T]
    return bias


def embed_tokens(params: dict, cfg: BertConfig, ids: np.ndarray, types: np.ndarray, words: np.ndarray | None = None) -> np.ndarray:
    """[B, T] ids -> [B, T, C] sum of word, position (and token type) embeddings. words: the [B, T, C]
    word rows when the executor looks them up itself (an int8 table), else read from params."""
    B, T = ids.shape
    if words is None:
        table, rows = params["embeddings.word_embeddings.weight"], ids
    else:
        table, rows = words.reshape(B * T, -1), np.arange(B * T)
    bert = cfg.family != "mpnet"
    e = fused.embed_sum(table, rows, params["embeddings.position_embeddings.weight"], position_ids(cfg, ids),
                        params["embeddings.token_type_embeddings.weight"] if bert else None, types if bert else None)
    return e.reshape(B, T, -1)


def encoder_forward(
    params: dict, cfg: BertConfig, ids: np.ndarray, mask: np.ndarray, types: np.ndarray, ex: Executor
):
    """-> last hidden state [B, T, C] (a value of the executor)."""
    B, T = ids.shape
    if B == 0 or T == 0:
        raise InputError(f"an empty batch of token ids (shape {(B, T)}): pass at least one sequence of at least one token")
    for what, a in (("attention mask", mask), ("token type ids", types)):
        if np.shape(a) != (B, T):
            raise InputError(f"the {what} has shape {np.shape(a)}: it must have the shape of the token ids, {(B, T)}")
    if T > cfg.max_tokens:
        raise InputError(f"sequence length {T} exceeds the model's {cfg.max_tokens} positions; truncate the input")
    if ids.min() < 0 or ids.max() >= cfg.vocab_size:
        raise InputError(f"token ids must lie in [0, {cfg.vocab_size}); got {ids.min()}..{ids.max()}")
    if cfg.family != "mpnet" and (types.min() < 0 or types.max() >= cfg.type_vocab_size):
        raise InputError(f"token type ids must lie in [0, {cfg.type_vocab_size})")
    ex.begin(mask)
    bias = attention_bias(params, cfg, mask)
    x = ex.site("embeddings.sum", embed_tokens(params, cfg, ids, types, ex.word_rows(ids)))  # [B, T, C]
    x = ex.layer_norm("embeddings.LayerNorm", x)
    in_site = "embeddings.LayerNorm.out"
    for i in range(cfg.num_hidden_layers):
        x = ex.layer(layer_prefix(i), x, in_site, bias)
        in_site = f"{layer_prefix(i)}.output.LayerNorm.out"
    return x


def encoder_layer(ex: Executor, p: str, x, in_site: str, bias: np.ndarray):
    """One encoder layer (prefix p) on x [B, T, C], the value of site in_site -> [B, T, C], the value of
    site p.output.LayerNorm.out. The forward's only statement of a layer: Executor.layer runs it."""
    q, k, v = ex.qkv(f"{p}.attention.self", x, in_site)
    ctx = ex.site(f"{p}.attention.output.dense.in", ex.attention(f"{p}.attention.self", q, k, v, bias))
    a = ex.linear_site(f"{p}.attention.output.dense", ctx, f"{p}.attention.output.dense.in", f"{p}.attention.output.dense.out")
    x1 = ex.add_layer_norm(f"{p}.attention.output.residual", f"{p}.attention.output.LayerNorm", a, x)
    # FF1 with its activation: act(x1 W1^T + b1) [B, T, I], the FF2 input (where TM-IQR clips)
    g = ex.linear_site(f"{p}.intermediate.dense", x1, f"{p}.attention.output.LayerNorm.out", f"{p}.output.dense.in",
                       act=ex.cfg.hidden_act)
    f2 = ex.linear_site(f"{p}.output.dense", g, f"{p}.output.dense.in", f"{p}.output.dense.out")  # [B, T, C]
    return ex.add_layer_norm(f"{p}.output.residual", f"{p}.output.LayerNorm", f2, x1)


def head_forward(cfg: BertConfig, hidden, ex: Executor) -> np.ndarray | None:
    """Last hidden state -> logits [B, L] (sequence) or [B, T, L] (token); None for a bare encoder."""
    if cfg.head == "none":
        return None
    last = f"{layer_prefix(cfg.num_hidden_layers - 1)}.output.LayerNorm.out"
    if cfg.head == "token":
        return ex.f(ex.linear("classifier", hidden, last))
    cls = ex.site("head.in", ex.f(hidden)[:, 0])  # [B, C]: the first token
    if cfg.family == "bert":
        pooled = ex.site("pooler.dense.out", np.tanh(ex.f(ex.linear("pooler.dense", cls, "head.in"))))
        return ex.f(ex.linear("classifier", pooled, "pooler.dense.out"))
    dense = ex.site("classifier.dense.out", np.tanh(ex.f(ex.linear("classifier.dense", cls, "head.in"))))
    return ex.f(ex.linear("classifier.out_proj", dense, "classifier.dense.out"))


# ------------------------------------------------------------------------------------- pooling


@dataclasses.dataclass(frozen=True)
class Pooling:
    mode: str = "mean"  # mean | cls | max
    normalize: bool = False

    @classmethod
    def from_dir(cls, model_dir: Path) -> "Pooling":
        """sentence-transformers layout: modules.json -> 1_Pooling/config.json (+ a Normalize module)."""
        modules_file = model_dir / "modules.json"
        if not modules_file.is_file():
            return cls()
        modules = json.loads(modules_file.read_text(encoding="utf-8"))
        mode, normalize = "mean", False
        for m in modules:
            kind = m.get("type", "")
            if kind.endswith("Pooling"):
                pc = json.loads((model_dir / m.get("path", "") / "config.json").read_text(encoding="utf-8"))
                if pc.get("pooling_mode_cls_token"):
                    mode = "cls"
                elif pc.get("pooling_mode_max_tokens"):
                    mode = "max"
                elif pc.get("pooling_mode_mean_tokens"):
                    mode = "mean"
                else:
                    raise UnsupportedModelError(f"{model_dir}: pooling mode {pc} is not supported (mean, cls, max)")
            elif kind.endswith("Normalize"):
                normalize = True
        return cls(mode, normalize)

    def __call__(self, hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """[B, T, C], [B, T] -> [B, C]."""
        m = mask[..., None].astype(np.float32)
        if self.mode == "cls":
            out = hidden[:, 0]
        elif self.mode == "max":
            out = np.where(m > 0, hidden, np.float32(-1e9)).max(axis=1)
        else:
            out = (hidden * m).sum(axis=1) / np.maximum(m.sum(axis=1), np.float32(1e-9))
        if self.normalize:
            out = out / np.maximum(np.linalg.norm(out, axis=-1, keepdims=True), np.float32(1e-12))
        return out.astype(np.float32)


# ------------------------------------------------------------------------------------- the model


@dataclasses.dataclass
class Output:
    last_hidden_state: np.ndarray  # [B, T, C] float32
    attention_mask: np.ndarray  # [B, T]
    logits: np.ndarray | None  # [B, L] or [B, T, L]


class Model:
    """A loaded checkpoint: config, canonical FP32 params, tokenizer, pooling."""

    def __init__(self, cfg: BertConfig, params: dict, tokenizer: Tokenizer | None, pooling: Pooling, source: str = ""):
        self.config = cfg
        self.params = params
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.source = source

    # The executor that runs this model; quantized models return theirs.
    def executor(self) -> Executor:
        return Executor(self.params, self.config)

    def forward(self, batch: Batch, executor: Executor | None = None) -> Output:
        ex = executor or self.executor()
        hidden = encoder_forward(self.params, self.config, batch.input_ids, batch.attention_mask, batch.token_type_ids, ex)
        logits = head_forward(self.config, hidden, ex)
        return Output(np.asarray(ex.f(hidden), np.float32), batch.attention_mask, logits)

    def _need_tokenizer(self) -> Tokenizer:
        if self.tokenizer is None:
            raise InputError(f"{self.source}: this model has no tokenizer.json; pass token ids to forward()")
        return self.tokenizer

    def batches(
        self, texts: Sequence[str], pairs: Sequence[str] | None = None, batch_size: int = 32
    ) -> Iterator[tuple[np.ndarray, Batch]]:
        """Tokenize, group rows of similar length (less padding), yield (row indices, batch)."""
        tok = self._need_tokenizer()
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        full = tok.encode(texts, pairs)
        lengths = full.attention_mask.sum(axis=1)
        order = np.argsort(-lengths, kind="stable")
        for s in range(0, len(order), batch_size):
            rows = order[s : s + batch_size]
            T = int(lengths[rows].max())
            yield rows, Batch(
                full.input_ids[rows, :T], full.attention_mask[rows, :T], full.token_type_ids[rows, :T], full.truncated[rows]
            )

    def embed(self, texts: Sequence[str], batch_size: int = 32, executor: Executor | None = None) -> np.ndarray:
        """-> [n, C] float32 sentence embeddings with the model's declared pooling."""
        out = np.zeros((len(texts), self.config.hidden_size), np.float32)
        for rows, b in self.batches(texts, batch_size=batch_size):
            o = self.forward(b, executor)
            out[rows] = self.pooling(o.last_hidden_state, o.attention_mask)
        return out

    def classify(
        self, texts: Sequence[str], pairs: Sequence[str] | None = None, batch_size: int = 32, executor: Executor | None = None
    ) -> np.ndarray:
        """-> [n, L] float32 logits of the sequence-classification (or regression) head."""
        if self.config.head != "sequence":
            raise UnsupportedModelError(
                f"{self.source}: {self.config.architecture} has no sequence-classification head; "
                "use a *ForSequenceClassification checkpoint (or `npbert embed` for sentence embeddings)"
            )
        out = np.zeros((len(texts), self.config.n_labels), np.float32)
        for rows, b in self.batches(texts, pairs, batch_size):
            out[rows] = self.forward(b, executor).logits
        return out

    def label_names(self) -> list[str]:
        cfg = self.config
        if cfg.id2label:
            return [cfg.id2label.get(str(i), str(i)) for i in range(cfg.n_labels)]
        return [str(i) for i in range(cfg.n_labels)]


def load_model(model_dir: str | Path, with_tokenizer: bool = True) -> Model:
    """Load an HF model directory (config.json, safetensors single or sharded, tokenizer.json)."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise WeightsError(f"{model_dir}: no such model directory (run `python weights/fetch.py` for the default model)")
    cfg = BertConfig.from_file(model_dir / "config.json")
    params = canonicalize(load_checkpoint(model_dir), cfg, str(model_dir))
    tok = Tokenizer.from_dir(model_dir, cfg.max_tokens) if with_tokenizer else None
    return Model(cfg, params, tok, Pooling.from_dir(model_dir), str(model_dir))
