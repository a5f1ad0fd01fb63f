"""The quantized encoder: recipes, the integer executor and its fake-quant twin, calibration, save/load.

The forward is model.py's, unchanged: this module supplies Executors. Every tensor the forward
names with `site(...)` gets a `SiteSpec` from the recipe (off / dynamic / static, bits, symmetric,
granularity, estimator). Two executors share one code path and differ only in arithmetic:

- integer (`simulate=False`): activations become integer codes (numba kernels), linear layers and the
  two attention matmuls run int8/int16 GEMMs with exact int32/int64 accumulation, residual sums are
  integer adds with saturation; GELU, softmax and LayerNorm run in float32 between dequantize and
  requantize.
- fake-quant (`simulate=True`): the same codes from the pure NumPy quantizers / the kernels' naive
  twins, but every GEMM is a float64 matmul of dequantized values. This is the float simulation the
  PEG paper's code runs; the integer path must match it (tests/unit/test_qmodel.py).

Shapes: B batch, T tokens, C hidden, h heads, d head size, K GEMM depth, N GEMM outputs, S segments.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import math
import re
import threading
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from npbert import ops
from npbert.errors import CalibrationError, InputError, QuantError
from npbert.io.tokenizer import Batch
from npbert.kernels import fused
from npbert.kernels import gemm as kg
from npbert.kernels import layer as kl
from npbert.kernels import quantize as kq
from npbert.kernels import reference as kref
from npbert.model import QKV_PROJECTIONS, Executor, Model, Output, expected_shapes, linear_names, layer_prefix
from npbert.quant import peg
from npbert.quant.estimators import ESTIMATORS, make_estimator
from npbert.quant.qparams import QParams, check_bits, qparams_from_range
from npbert.quant.quantizers import dequantize, group_bounds_equal, quantize

FORMAT_VERSION = 1

# --------------------------------------------------------------------------------------- recipes


@dataclasses.dataclass(frozen=True)
class SiteSpec:
    """How one named tensor is quantized."""

    mode: str = "off"  # off | dynamic (scale from the current values, per sequence) | static (calibrated)
    bits: int = 8
    symmetric: bool = False
    granularity: str = "tensor"  # tensor | group (per-embedding-group along the hidden dim; static only)
    estimator: str = "running_minmax"
    tmiqr: bool = False  # dynamic only: TM-IQR clipping threshold instead of abs-max
    fixed_range: tuple[float, float] | None = None  # static without calibration (softmax probs: [0, 1])

    def validate(self, where: str) -> "SiteSpec":
        if self.mode not in ("off", "dynamic", "static"):
            raise QuantError(f"{where}: mode {self.mode!r} is not one of off, dynamic, static")
        try:
            check_bits(self.bits)
        except QuantError as e:
            raise QuantError(f"{where}: {e}") from None
        if self.granularity not in ("tensor", "group"):
            raise QuantError(f"{where}: granularity {self.granularity!r} is not one of tensor, group")
        if self.estimator not in ESTIMATORS:
            raise QuantError(f"{where}: unknown estimator {self.estimator!r}; valid: {sorted(ESTIMATORS)}")
        if self.mode == "dynamic" and (not self.symmetric or self.granularity != "tensor"):
            raise QuantError(f"{where}: dynamic sites are symmetric per tensor (per sequence)")
        if self.bits > 8 and not self.symmetric and self.mode != "off":
            # The 16-bit kernels take signed int16 codes: (uint16 - zp) would not fit int16.
            raise QuantError(f"{where}: sites wider than 8 bits are symmetric (int16 codes); set symmetric")
        return self


@dataclasses.dataclass(frozen=True)
class Recipe:
    name: str
    version: int
    description: str
    rules: tuple[tuple[str, dict], ...]  # (fnmatch pattern over site names, SiteSpec fields); later wins
    weight_bits: int = 8
    weight_granularity: str = "tensor"  # tensor | channel
    weight_estimator: str = "minmax"  # minmax | mse
    peg_groups: int = 6
    peg_permute: bool = True
    embedding_int8: bool = False  # word-embedding table as int8 rows with one scale per row (emb=int8)
    peg_split: str = "equal"  # PEG group sizes: equal (the paper), or range (fitted to the sorted ranges)

    def spec(self, site: str, overrides: Sequence[tuple[str, dict]] = ()) -> SiteSpec:
        fields: dict = {}
        for pattern, kv in (*self.rules, *overrides):
            if fnmatch.fnmatchcase(site, pattern):
                fields.update(kv)
        return SiteSpec(**fields).validate(site)

    @property
    def needs_calibration(self) -> bool:
        return any(kv.get("mode") == "static" and "fixed_range" not in kv for _, kv in self.rules)


# Site families (patterns over the names model.py gives its sites).
LINEAR_INPUTS = ("embeddings.LayerNorm.out", "*.output.LayerNorm.out", "*.attention.output.dense.in",
                 "*.output.dense.in", "head.in", "pooler.dense.out", "classifier.dense.out")
QKV = ("*.attention.self.query.out", "*.attention.self.key.out", "*.attention.self.value.out")
PROBS = "*.attention.self.probs"
FFN_IN = "*.attention.output.LayerNorm.out"  # also the FFN residual's other operand
FFN_OUT = "*.output.dense.out"
FFN_RESIDUAL = "*.output.residual"
# The FF2 input alone: "*.output.dense.in" also matches "*.attention.output.dense.in" (fnmatch's * spans dots).
FF2_IN = "encoder.layer.*[0-9].output.dense.in"

_DYN = {"mode": "dynamic", "bits": 8, "symmetric": True}
_PROBS_FIXED = {"mode": "static", "bits": 8, "symmetric": True, "fixed_range": (0.0, 1.0)}
_STATIC = {"mode": "static", "bits": 8, "symmetric": False, "estimator": "running_minmax"}
_STATIC_SYM = {**_STATIC, "symmetric": True}

_DYNAMIC_RULES = tuple((p, _DYN) for p in (*LINEAR_INPUTS, *QKV)) + ((PROBS, _PROBS_FIXED),)
_W8A8_RULES = (("*", _STATIC), *((p, _STATIC_SYM) for p in QKV), (PROBS, {**_STATIC, "symmetric": True}),
               ("*.attention.self.scores", {"mode": "off"}))
_MP16 = {"bits": 16, "symmetric": True}

RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe("dynamic", 1, "El-Kurdi et al. I8 baseline: int8 weights, activations from their current max-abs",
               _DYNAMIC_RULES),
        Recipe("tm-iqr", 1, "dynamic + TM-IQR clipping of the FF2 input (El-Kurdi et al., Algorithm 1)",
               (*_DYNAMIC_RULES, ("*.output.dense.in", {"tmiqr": True}))),
        Recipe("w8a8", 1, "static PTQ (Bondarenko et al.): symmetric weights, asymmetric calibrated activations",
               _W8A8_RULES, weight_estimator="mse"),
        Recipe("w8a8-mp", 1, "w8a8 with 16-bit FFN input, FFN output and FFN residual sum",
               (*_W8A8_RULES, *((p, _MP16) for p in (FFN_IN, FFN_OUT, FFN_RESIDUAL))), weight_estimator="mse"),
        Recipe("peg", 1, "w8a8 with per-embedding-group FFN input/output/residual, range-based permutation",
               (*_W8A8_RULES, *((p, {"granularity": "group", "estimator": "minmax"}) for p in (FFN_IN, FFN_OUT, FFN_RESIDUAL))),
               weight_estimator="mse"),
    )
}


RECIPE_OPTIONS = ("weights=tensor|channel, wbits=7|8, emb=int8|float, west=minmax|mse|percentile, ff2bits=16, groups=K, permute=0|1, "
                  "split=equal|range, "
                  "tmiqr=ff2|all, estimator=NAME")
WEIGHT_ESTIMATORS = ("minmax", "mse", "percentile")


def get_recipe(spec: str) -> Recipe:
    """'NAME' or 'NAME:key=value:key=value' -> Recipe (':' separates options, so recipe lists can use ',').

    Options (any recipe): weights=tensor|channel (one weight scale per tensor or per output channel);
    wbits=7: weights on the 7-bit grid [-63, 63], whose k-pairs all fit the exact uint8 x int8
    vpmaddubsw kernel with no fixes (8-bit weights run it too, with a sparse list of fixes for the
    rare pairs that could saturate: kernels/gemm.py), at the price of half the weight resolution;
    emb=int8 stores the word-embedding table as int8 rows, one symmetric abs-max scale per row (4x
    smaller; a looked-up row is dequantized, so no activation changes type);
    west=minmax|mse|percentile, the weight range estimator (minmax never clips a weight; mse, the
    w8a8/w8a8-mp/peg default, clips where that lowers the weights' MSE, which cuts the few large FFN
    output weights that write the outlier dims); ff2bits=16: the FF2 input (the GELU output, 4x the
    hidden size wide; not the attention output projection's input) at 16 bits, symmetric;
    estimator=NAME for every static activation site;
    PEG: groups=K, permute=0|1, split=equal|range (range: group sizes that minimise the summed squared
    step over the range-sorted dims, so the few widest dims can get a small group; needs permute=1); TM-IQR: tmiqr=ff2|all (all: clip every linear input, not only FF2's).
    The full string is the recipe's name in results and files."""
    if not isinstance(spec, str):
        raise QuantError(f"recipe must be a string, got {spec!r}")
    base, *opts = spec.split(":")
    if base not in RECIPES:
        raise QuantError(f"unknown recipe {base!r}; valid: {', '.join(RECIPES)} (or fp32), optionally NAME:key=value:... with {RECIPE_OPTIONS}")
    rec = RECIPES[base]
    if not opts:
        return rec
    changes: dict = {"name": spec}
    extra_rules: list = []
    for item in opts:
        key, _, val = item.partition("=")
        key, val = key.strip(), val.strip()
        if key == "weights" and val in ("tensor", "channel"):
            changes["weight_granularity"] = val
        elif key == "wbits" and val in ("7", "8"):
            changes["weight_bits"] = int(val)
        elif key == "emb" and val in ("int8", "float"):
            changes["embedding_int8"] = val == "int8"
        elif key == "west" and val in WEIGHT_ESTIMATORS:
            changes["weight_estimator"] = val
        elif key == "ff2bits" and val == "16":
            extra_rules.append((FF2_IN, {"bits": 16, "symmetric": True}))
        elif key == "groups" and val.isdigit() and int(val) >= 1:
            changes["peg_groups"] = int(val)
        elif key == "permute" and val in ("0", "1"):
            changes["peg_permute"] = val == "1"
        elif key == "split" and val in ("equal", "range"):
            changes["peg_split"] = val
        elif key == "tmiqr" and val in ("ff2", "all"):
            patterns = ("*.output.dense.in",) if val == "ff2" else LINEAR_INPUTS
            extra_rules += [(p, {"tmiqr": True}) for p in patterns]
        elif key == "estimator" and val in ESTIMATORS:
            extra_rules.append(("*", {"estimator": val}))
        else:
            raise QuantError(f"recipe {spec!r}: bad option {item!r}; options are {RECIPE_OPTIONS} "
                             f"(estimators: {', '.join(ESTIMATORS)})")
    if extra_rules:
        changes["rules"] = (*rec.rules, *extra_rules)
    out = dataclasses.replace(rec, **changes)
    if out.peg_split == "range" and not out.peg_permute:
        raise QuantError(f"recipe {spec!r}: split=range sizes groups over the range-sorted dims; it needs permute=1")
    return out


def parse_override(text: str) -> tuple[str, dict]:
    """'PATTERN=key:value,key:value' or 'PATTERN=off' -> (pattern, SiteSpec fields)."""
    if "=" not in text:
        raise QuantError(f"override {text!r}: write PATTERN=off or PATTERN=bits:16,estimator:mse,granularity:group")
    pattern, _, body = text.partition("=")
    if body.strip() == "off":
        return pattern.strip(), {"mode": "off"}
    kv: dict = {}
    for item in filter(None, (s.strip() for s in body.split(","))):
        key, _, val = item.partition(":")
        if key == "bits":
            try:
                kv["bits"] = int(val)
            except ValueError:
                raise QuantError(f"override {text!r}: bits must be an integer") from None
        elif key in ("symmetric", "tmiqr"):
            kv[key] = val.lower() in ("1", "true", "yes")
        elif key in ("mode", "granularity", "estimator"):
            kv[key] = val
        else:
            raise QuantError(f"override {text!r}: unknown key {key!r} (bits, mode, granularity, estimator, symmetric, tmiqr)")
    return pattern.strip(), kv


# ------------------------------------------------------------------------------ site discovery


class _SiteRecorder(Executor):
    """Runs the forward's structure once and records site names in order (and which sites feed linears).
    Only shapes matter, so linears and the word lookup return zeros: no weight is read (a loaded int8
    model has no float weights to read)."""

    def __init__(self, params, cfg):
        super().__init__(params, cfg)
        self.sites: list[str] = []
        self.linear_inputs: dict[str, str] = {}

    def site(self, name, x):
        if name not in self.sites:
            self.sites.append(name)
        return x

    def linear(self, name, x, in_site, act=None):
        self.linear_inputs[name] = in_site
        return np.zeros((*np.shape(x)[:-1], self.params[name + ".bias"].shape[0]), np.float32)

    def word_rows(self, ids):
        return np.zeros((*ids.shape, self.cfg.hidden_size), np.float32)

    def attention(self, prefix, q, k, v, bias):
        self.site(prefix + ".scores", None)
        self.site(prefix + ".probs", None)
        return super().attention(prefix, q, k, v, bias)


def discover_sites(model: Model) -> tuple[list[str], dict[str, str]]:
    """-> (site names in execution order, {linear name: its input site}) from one tiny forward."""
    rec = _SiteRecorder(model.params, model.config)
    ids = np.zeros((1, 2), np.int64)
    model.forward(Batch(ids, np.ones_like(ids), np.zeros_like(ids), np.zeros(1, bool)), rec)
    return rec.sites, rec.linear_inputs


# ------------------------------------------------------------------------------ runtime tensors


@dataclasses.dataclass
class QTensor:
    """Integer codes with their static QParams (per tensor, or per group along the last axis)."""

    q: np.ndarray  # [..., C] codes
    qp: QParams


@dataclasses.dataclass
class QWeight:
    """An int8 linear weight: the packed panels are its stored copy (one byte per weight; kernels that
    need another layout cache a repack, see PackedInt8Weight)."""

    scale: np.ndarray  # float32 [N] (per-tensor scales broadcast)
    bias: np.ndarray | None  # float32 [N]
    packed: object  # kernels' PackedInt8Weight
    deq64: np.ndarray | None = None  # float64 [N, K] dequantized, built lazily for simulation

    def __post_init__(self):
        # the executor hands these to the GEMM's unchecked entry (kernels.gemm.dequant_into): their form
        # is settled here, once per weight, for weights built in memory and read from a file alike
        n = self.packed.n
        self.scale = np.ascontiguousarray(self.scale, np.float32)
        if self.bias is not None:
            self.bias = np.ascontiguousarray(self.bias, np.float32)
        for what, v in (("scale", self.scale), ("bias", self.bias)):
            if v is not None and v.shape != (n,):
                raise QuantError(f"a weight with {n} output rows has a {what} of shape {v.shape}; expected [{n}] (re-save the model)")

    @property
    def q(self) -> np.ndarray:
        """int8 [N, K] codes (unpacked on each access)."""
        return self.packed.w


def quantize_weight(w: np.ndarray, b: np.ndarray | None, bits: int, granularity: str, estimator: str) -> QWeight:
    """W [N, K] float32 -> symmetric signed codes with per-tensor or per-output-channel scales."""
    if bits > 8:
        raise QuantError(f"weights are int8 in the integer kernels; weight_bits={bits} is not supported")
    axis = 0 if granularity == "channel" else None
    est = make_estimator(estimator, bits=bits, symmetric=True, axis=axis)
    est.update(w)
    lo, hi = est.range()
    qp = qparams_from_range(lo, hi, bits, symmetric=True, signed=True, axis=axis)
    q = quantize(w, qp).astype(np.int8)
    scale = np.broadcast_to(qp.scale, (w.shape[0],)).astype(np.float32)
    # the bias is copied: a view would keep the whole FP32 checkpoint (memory map) alive
    return QWeight(scale, None if b is None else np.array(b, np.float32, copy=True), kg.pack_int8_weight(q))


WORD_EMB = "embeddings.word_embeddings.weight"


def quantize_embedding_rows(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[V, C] float -> (int8 [V, C], float32 [V]): symmetric per-row abs-max (no row is clipped).
    Rows are what a lookup reads, so one scale per row costs one multiply per looked-up value."""
    amax = np.abs(table).max(axis=1).astype(np.float32)
    scale = np.where(amax > 0, amax / np.float32(127), np.float32(1)).astype(np.float32)
    q = np.empty(table.shape, np.int8)
    for r0 in range(0, table.shape[0], 4096):  # in blocks: no full-size float temporaries
        r1 = r0 + 4096
        q[r0:r1] = np.clip(np.rint(table[r0:r1] / scale[r0:r1, None]), -127, 127)
    return q, scale


# ------------------------------------------------------------------------------------ executors


def _segments(mask: np.ndarray | None, rows_per_seq: int, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-sequence segments of a [B*T, K] matrix: seg_starts [B+1], row_valid [B*T]."""
    B = n_rows // rows_per_seq
    seg = np.arange(B + 1, dtype=np.int64) * rows_per_seq
    valid = np.ones(n_rows, bool) if mask is None else (mask.reshape(-1) > 0)
    if valid.size != n_rows:  # (the quantizers' unchecked entries read one entry per row)
        raise InputError(f"the attention mask has {valid.size} entries for {n_rows} rows; pass one per token")
    return seg, valid


class QuantExecutor(Executor):
    """Executes a QuantizedModel: integer kernels, or (simulate=True) the float fake-quant twin."""

    # Fuse the attention scores -> softmax -> probs codes chain into one kernel (skipping the
    # float `scores` site when it is not quantized). Executors that tap every site turn this off.
    FUSE_SOFTMAX = True
    # Write the encoder's large intermediate values into per-role buffers reused layer after layer and
    # forward after forward (see buffer()): linear outputs and accumulators, dynamic codes, attention
    # probabilities and contexts, residual sums and LayerNorm outputs. Each call site of buffer() is for
    # a value whose last reader runs before the same role of the next layer is written (an output
    # LayerNorm is read by the next layer's attention block, before that layer's own output LayerNorm);
    # a new call site must keep to that. Executors that keep site values (taps) turn this off, or later
    # layers would overwrite what they kept.
    REUSE_OUTPUTS = True
    # Integer residual sum -> dequantize -> LayerNorm -> quantize as one kernel when the sum and the
    # LayerNorm output are both static per tensor / per group (w8a8, w8a8-mp, peg). Bit-identical to
    # the four steps; taps turn it off (neither the sum nor the float LayerNorm output is materialised).
    FUSE_RESIDUAL_LN = True
    # A linear whose output site is statically quantized writes codes straight from its epilogue
    # (linear_site). Bit-identical; taps turn it off (the float output is never materialised).
    FUSE_LINEAR_QUANT = True
    # A linear's float output straight from the GEMM's registers on quad panels (kernels.gemm.gemm_dequant)
    # instead of the int32 result and then fused.epilogue. Bit-identical; a switch for in-process A/B.
    FUSE_GEMM_DEQUANT = True
    # A linear's dynamic input codes written as uint8 (codes + 128, zero point kq.UNSIGNED_ZP): the quad GEMM's
    # own operand, read without the converting copy int8 codes need. Bit-identical; a switch for A/B.
    DYN_UNSIGNED_CODES = True
    # Query, key and value as one GEMM over the stacked weight (qkv): one input read, one dispatch,
    # N = 3C. Bit-identical (the same panels and epilogue per column); a switch for A/B.
    FUSE_QKV = True
    # ... up to this many rows (tokens in the batch). Measured on all-MiniLM-L6-v2 in one process
    # (bench/ab_recipes.py --off FUSE_QKV, 2 threads): 1.02-1.03x at 128-512 rows, 1.00x at 768 and
    # 0.99x at 1024, where the three [M, C] GEMMs are no longer bound by per-call costs.
    FUSE_QKV_MAX_ROWS = 512
    # ... and their dynamic head-major codes in one call for all three (quantize_dynamic_heads_split)
    # instead of three. Bit-identical; a switch for A/B.
    FUSE_QKV_HEADS = True

    # A whole encoder layer of a dynamic recipe as one flat run of kernel calls (layer(), _LayerPlan):
    # the kernels, arguments and buffers of the hooks above, without their per-call Python (a MiniLM
    # batch-1 forward spent ~2 ms of ~16 there: bench/bench_overhead.py). Bit-identical; taps and the
    # other switches' A/Bs turn it off, and so does anything it does not cover (static sites, int16
    # codes, pair panels...). Past FUSE_QKV_MAX_ROWS it runs q, k and v as three GEMMs, as qkv() does.
    FUSE_LAYERS = True
    # ... and that sequence as one compiled call (kernels.layer.dynamic_layer_into) instead of Python's
    # ~16 kernel calls a layer. Off: the same kernels called from layer() one by one.
    LAYER_CORE = True

    def __init__(self, qm: "QuantizedModel", simulate: bool = False):
        super().__init__(qm.params, qm.config)
        self.qm = qm
        self.sim = simulate
        # parallel float kernels: the integer forward runs no BLAS; the simulation's GEMMs are BLAS
        self.PARALLEL_FLOAT_KERNELS = not simulate
        self._dyn_cache: dict[str, tuple] = {}
        self._seg_cache: dict[tuple, tuple] = {}
        self._columns: dict[int, tuple] = {}  # id(view) -> (view, parent, c0, siblings, prefix): qkv's views
        self._bias_args = None  # (bias, (B, h, T), softmax_bias_args(bias)): the forward's, see _softmax_bias
        self._last_layer = layer_prefix(qm.config.num_hidden_layers - 1) + "."

    def begin(self, attention_mask):
        super().begin(attention_mask)
        self._dyn_cache = {}
        self._seg_cache = {}
        self._columns = {}
        self._bias_args = None

    def word_rows(self, ids):
        emb = self.qm.word_emb
        if emb is None:
            return None
        q, scale = emb  # int8 [V, C], float32 [V]
        return q[ids].astype(np.float32) * scale[ids][..., None]

    # ---- values
    def f(self, x):
        if isinstance(x, QTensor):
            return dequantize(x.q, x.qp)
        return x

    def _mask_for(self, x) -> np.ndarray | None:
        return self.mask if (x.ndim == 3 and self.mask is not None) else None

    def _quantize_static(self, x: np.ndarray, qp: QParams) -> QTensor:
        if self.sim or qp.granularity == "channel":
            return QTensor(quantize(x, qp), qp)
        x = np.ascontiguousarray(x, np.float32)
        if qp.granularity == "group":
            x2 = x.reshape(-1, x.shape[-1])
            q = kq.quantize_static_grouped(x2, qp.group_bounds, qp.scale, qp.zero_point, qp.qmin, qp.qmax, qp.int_dtype)
            return QTensor(q.reshape(x.shape), qp)
        q = kq.quantize_static(x, float(qp.scale), int(qp.zero_point), qp.qmin, qp.qmax, qp.int_dtype)
        return QTensor(q, qp)

    def site(self, name, x):
        qp = self.qm.site_qparams.get(name)
        if qp is None:  # off, or dynamic (quantized where it is consumed)
            return x
        return self._quantize_static(np.asarray(self.f(x), np.float32), qp)

    def _dynamic(self, name: str, x: np.ndarray, spec: SiteSpec, unsigned: bool = False, heads: int = 0):
        """float [.., K] -> (codes [M, K], per-row scale [M]) with one scale per sequence, cached per site.
        unsigned (a linear's input, 8 bits or fewer, integer kernels): the codes + 128 as uint8, zero point
        kq.UNSIGNED_ZP, which the quad GEMM reads as they are (quantize_dynamic_rows(unsigned=True)).
        heads (an attention operand x [B, T, C], 8 bits or fewer, integer kernels): the codes head-major,
        int8 [B, heads, T, C/heads] (quantize_dynamic_heads); a column view from qkv() is read in
        place from its [B, T, 3C] parent (the _columns registry), without a contiguous copy, and together
        with its two siblings in one call (quantize_dynamic_heads_split) when their specs agree.
        The integer kernels are called through their unchecked entries (kq.*_into): every argument is
        built here (_rows_codes, _head_codes, which QuantExecutor.layer calls too)."""
        # (uint8 codes check the u8s8 K bound, half the s8s8 one: longer rows keep int8 codes)
        unsigned = unsigned and spec.bits <= 8 and not self.sim and x.shape[-1] <= kg.K_MAX_U8S8
        heads = heads if (spec.bits <= 8 and not self.sim and x.ndim == 3) else 0
        key = (name, id(x), unsigned, heads)
        hit = self._dyn_cache.get(key)
        if hit is not None:
            return hit[0], hit[1]
        M = math.prod(x.shape[:-1])
        seg, valid = self._segs(x, M)
        tmiqr = bool(spec.tmiqr)
        col = self._columns.get(id(x)) if heads else None
        col = col if (col is not None and col[0] is x) else None  # a column block of qkv's output
        if col is not None and self.FUSE_QKV_HEADS and self._same_specs(col[3]):
            # q, k and v alike: all three blocks in one call, read in place, each cached
            _, parent, _c0, group, prefix = col
            B, T, C = x.shape
            q3, rs3 = self._head_codes(f"codes:{prefix}.qkv", parent.reshape(M, -1), self._block_starts(len(group), C), C,
                                       heads, T, seg, valid, spec)
            for i, (n, v) in enumerate(group):
                self._dyn_cache[(n, id(v), False, heads)] = (q3[i], rs3[i], v)
            return self._dyn_cache[key][:2]
        if heads:  # one block: a column block read in place, or the value itself
            B, T, C = x.shape
            parent, c0 = (col[1], col[2]) if col is not None else (np.ascontiguousarray(x, np.float32), 0)
            q, row_scale = self._head_codes("codes:" + name, parent.reshape(M, -1), np.array([c0], np.int64), C, heads, T,
                                            seg, valid, spec)
            q, row_scale = q[0], row_scale[0]
        else:
            x2 = np.ascontiguousarray(x, np.float32).reshape(M, x.shape[-1])
            if self.sim:
                q, scales, _t = kref.quantize_dynamic_ref(x2, seg, valid, spec.bits, tmiqr)
                row_scale = np.repeat(scales, np.diff(seg)).astype(np.float32)
            else:
                q, row_scale = self._rows_codes(name, x2, seg, valid, spec, unsigned)
        self._dyn_cache[key] = (q, row_scale, x)  # keep x alive: id()
        return q, row_scale

    def _array(self, name: str, shape: tuple, dtype) -> np.ndarray:
        """Value `name`'s reusable buffer (buffer()), or a fresh array where it has none."""
        buf = self.buffer(name, shape, dtype)
        return kg.aligned_empty(math.prod(shape), dtype).reshape(shape) if buf is None else buf

    def _rows_codes(self, name: str, x2: np.ndarray, seg, valid, spec: SiteSpec, unsigned: bool):
        """Integer dynamic codes of site `name` [M, K] (uint8 + 128 if unsigned, else int8 / int16 by bits)
        and their row scales [M] from float32 x2 [M, K] C-contiguous, into the site's code buffer."""
        M, S = x2.shape[0], seg.size - 1
        q = self._array("codes:" + name, x2.shape, np.uint8 if unsigned else np.int8 if spec.bits <= 8 else np.int16)
        row_scale = np.empty(M, np.float32)
        kq.dynamic_rows_into(x2, seg, valid, spec.bits, bool(spec.tmiqr), unsigned, q, row_scale, np.empty(S, np.float32),
                             np.empty(S, np.float32))
        return q, row_scale

    def _head_codes(self, buf_name: str, x2: np.ndarray, c0s: np.ndarray, C: int, heads: int, T: int, seg, valid,
                    spec: SiteSpec):
        """Head-major int8 codes [nb, B, heads, T, C/heads] and row scales [nb, B*T] of the column blocks
        x2[:, c0:c0 + C] (c0 in c0s, int64 [nb]; each block its own tensor) of float32 x2 [B*T, W]
        C-contiguous, rows b*T + t, into buffer buf_name: quantize_dynamic_heads(_split)'s call."""
        nb, M, S = c0s.shape[0], x2.shape[0], seg.size - 1
        q = self._array(buf_name, (nb, M // T, heads, T, C // heads), np.int8)
        rs = np.empty((nb, M), np.float32)
        kq.heads_into(x2, c0s, C, seg, valid, spec.bits, bool(spec.tmiqr), heads, T, q, rs, np.empty((nb, S), np.float32),
                      np.empty((nb, S), np.float32), "quantize_dynamic_heads_split" if nb > 1 else "quantize_dynamic_heads")
        return q, rs

    def _segs(self, x: np.ndarray, M: int) -> tuple[np.ndarray, np.ndarray]:
        """The dynamic quantizers' (seg_starts, row_valid) for a value x with M rows: one segment per
        sequence (x [B, T, ..]) or per row; built once per forward and shape."""
        rows_per_seq = x.shape[1] if x.ndim == 3 else 1
        seg_key = (x.ndim, rows_per_seq, M)  # (the mask is the forward's: one per shape)
        segs = self._seg_cache.get(seg_key)
        if segs is None:
            segs = self._seg_cache[seg_key] = _segments(self._mask_for(x), rows_per_seq, M)
        return segs

    def _same_specs(self, group) -> bool:
        """Whether the sites of a qkv group share one spec (fixed per model: worked out once per group)."""
        specs = self.qm.specs
        return _prepared(self.qm.prepared, ("same-specs", group[0][0]), lambda: _one_spec(specs, [n for n, _ in group]))

    def _block_starts(self, nb: int, C: int) -> np.ndarray:
        """int64 [nb]: the first columns of nb blocks of width C (the split quantizer's c0s), kept per model."""
        return _prepared(self.qm.prepared, ("block-starts", nb, C), lambda: np.arange(nb, dtype=np.int64) * C)

    # ---- GEMMs
    def _matmul(self, codes: np.ndarray, qp: QParams | None, row_scale: np.ndarray | None, w: QWeight,
                act: str | None, name: str) -> np.ndarray:
        """codes [M, K] (static qp, or dynamic row_scale [M]) x W -> float32 [M, N] incl. bias and act,
        into linear `name`'s reusable output buffer where it has one (buffer())."""
        out = None if self.sim else self.buffer("out:" + name, (codes.shape[0], w.packed.n), np.float32)
        if self.sim:
            if w.deq64 is None:
                w.deq64 = w.q.astype(np.float64) * w.scale.astype(np.float64)[:, None]
            if qp is not None:
                a = dequantize(codes, qp).astype(np.float64)
            else:
                a = codes.astype(np.float64) * row_scale.astype(np.float64)[:, None]
            y = (a @ w.deq64.T).astype(np.float32)
        elif qp is not None and qp.granularity == "group":
            # PEG: the exact per-group integer GEMMs combined with the group scales, W's scale and the
            # bias in the kernel's tile store, then the activation
            return kg.gemm_grouped(codes, qp.group_bounds, qp.zero_point, qp.scale, w.packed, w.scale, w.bias, act, out)
        else:
            # float32(float64(acc) * activation scale) * W's scale + bias: gemm_grouped's rounding, so
            # PEG with one group is bit-identical to per tensor. On quad panels the GEMM does this in
            # its registers (gemm_dequant: the int32 result is never stored); elsewhere two passes.
            if self.FUSE_GEMM_DEQUANT and w.packed.layout == "quads" and codes.dtype in (np.int8, np.uint8):
                if qp is None and out is not None and codes.shape[0] and w.packed.kq:
                    return _dequant_dynamic(codes, row_scale, w, fused.ACT_CODES[act], out)
                scale = row_scale if qp is None else qp.scale
                return kg.gemm_dequant(codes, _codes_zp(codes, qp), w.packed, scale, w.scale, w.bias, act, out)
            return fused.epilogue(*self._accumulate(codes, qp, row_scale, w), w.scale, w.bias, act, out)
        y = y + w.bias if w.bias is not None else y
        return y if act is None else fused.activation(act, y, self.PARALLEL_FLOAT_KERNELS)

    def _accumulate(self, codes: np.ndarray, qp: QParams | None, row_scale: np.ndarray | None, w: QWeight):
        """The exact integer GEMM of codes [M, K] (dynamic: qp None; static per tensor: qp) with W ->
        (acc int32/int64 [M, N], the activation scale per row [M] or scalar)."""
        zp = _codes_zp(codes, qp)
        acc_buf = self.qm.scratch("acc", (codes.shape[0], w.packed.n), np.int32)
        if codes.dtype == np.int8:
            acc = kg.gemm_s8s8(codes, w.packed, out=acc_buf)
        elif codes.dtype == np.uint8:
            acc = kg.gemm_u8s8(codes, zp, w.packed, out=acc_buf)
        else:
            acc = kg.gemm_s16s8(codes, w.packed, zp)
        return acc, (row_scale if qp is None else qp.scale)

    def linear_site(self, name, x, in_site, out_site, act=None):
        """linear then the output site's static quantizer in one pass (epilogue_quantize): the float
        output is never stored. Falls back to the two steps for anything else."""
        w = self.qm.qweights.get(name)
        oqp = self.qm.site_qparams.get(out_site)
        fusable = (self.FUSE_LINEAR_QUANT and not self.sim and w is not None and oqp is not None
                   and _contiguous_grid(oqp, _GRID_CODES))
        inp = self._input_codes(x, in_site) if fusable else None
        if inp is None or (inp[2] is not None and inp[2].granularity not in ("tensor", "group")):
            return super().linear_site(name, x, in_site, out_site, act)
        lead, codes, qp, row_scale = inp
        N = w.packed.n
        grid = _out_grid(oqp, N, self.qm.prepared)
        if qp is not None and qp.granularity == "group":
            y = kg.gemm_grouped(codes, qp.group_bounds, qp.zero_point, qp.scale, w.packed, w.scale, w.bias, None,
                                self.buffer("out:" + name, (codes.shape[0], N), np.float32))
            q = fused.activation_quantize(y, act, grid)
        else:
            acc, rs = self._accumulate(codes, qp, row_scale, w)
            q = fused.epilogue_quantize(acc, rs, w.scale, w.bias, act, grid)
        return QTensor(q.reshape(*lead, N), oqp)

    def qkv(self, prefix, x, in_site):
        """query, key and value as one GEMM with the stacked weight (qm.qkv_weights) where all three are
        plain linears: integer input codes, no static output site, no simulation, at most
        FUSE_QKV_MAX_ROWS rows. One input read and one dispatch instead of three; q, k, v are column
        views of the [.., 3C] output, which the dynamic head quantizer reads in place, all three in one
        call (_dynamic). Bit-identical to the three linears."""
        rows = math.prod(np.shape(x.q if isinstance(x, QTensor) else x)[:-1])
        fuse = self.FUSE_QKV and not self.sim and rows <= self.FUSE_QKV_MAX_ROWS
        w = self.qm.qkv_weights.get(prefix) if fuse else None
        names = [f"{prefix}.{n}" for n in QKV_PROJECTIONS]
        if w is None or any(n + ".out" in self.qm.site_qparams for n in names):
            return super().qkv(prefix, x, in_site)
        inp = self._input_codes(x, in_site)
        if inp is None:  # float input (W8A32): the three BLAS linears
            return super().qkv(prefix, x, in_site)
        lead, codes, qp, row_scale = inp
        y = self._matmul(codes, qp, row_scale, w, None, prefix + ".qkv").reshape(*lead, w.packed.n)  # [.., 3C]
        C = w.packed.n // 3
        group = tuple((n + ".out", y[..., i * C:(i + 1) * C]) for i, n in enumerate(names))
        for i, (_, view) in enumerate(group):  # (the views kept alive: their ids stay unique)
            self._columns[id(view)] = (view, y, i * C, group, prefix)
        return tuple(self.site(n, view) for n, view in group)

    def _input_codes(self, x, in_site: str):
        """A linear's input as integer codes: (lead shape, codes [M, K], static QParams or None, dynamic
        per-row scales [M] or None); None where the input stays float (W8A32)."""
        if isinstance(x, QTensor):
            return x.q.shape[:-1], np.ascontiguousarray(x.q).reshape(-1, x.q.shape[-1]), x.qp, None
        spec = self.qm.specs[in_site]
        if spec.mode != "dynamic":
            return None
        codes, row_scale = self._dynamic(in_site, x, spec, unsigned=self.DYN_UNSIGNED_CODES)
        return np.shape(x)[:-1], codes, None, row_scale

    def buffer(self, name: str, shape: tuple, dtype) -> np.ndarray | None:
        """With REUSE_OUTPUTS, one scratch array per role, shared by the same value of every layer
        (name = "tag:site", role = the site without its "encoder.layer.N." prefix): each such value is
        dead before its role is written again (see REUSE_OUTPUTS). None (a fresh array) for the
        simulation, for values outside the encoder layers and the embeddings, and for the last layer's
        output, which escapes the forward."""
        if not self.REUSE_OUTPUTS or self.sim:
            return None
        roles = self.qm.roles
        role = roles.get(name, False)
        if role is False:  # worked out once per name and model: a forward asks ~20 times a layer
            tag, _, site = name.rpartition(":")
            if site.startswith("encoder.layer."):
                last = site.startswith(self._last_layer) and site.endswith(".output.LayerNorm.out")
                role = None if last else f"{tag}:{site.split('.', 3)[-1]}"
            else:
                role = f"{tag}:{site}" if site.startswith("embeddings.") else None
            roles[name] = role
        return None if role is None else self.qm.scratch(role, shape, dtype)

    def linear(self, name, x, in_site, act=None):
        w = self.qm.qweights.get(name)
        if w is None:
            return super().linear(name, x, in_site, act)
        inp = self._input_codes(x, in_site)
        if inp is None:  # input kept in float: W8A32 with the dequantized weights
            if w.deq64 is None:
                w.deq64 = w.q.astype(np.float64) * w.scale.astype(np.float64)[:, None]
            y = ops.linear(np.asarray(x, np.float32), w.deq64.astype(np.float32), w.bias)
            return y if act is None else fused.activation(act, y, parallel=False)  # after a BLAS GEMM
        lead, codes, qp, row_scale = inp
        return self._matmul(codes, qp, row_scale, w, act, name).reshape(*lead, -1)

    # ---- a whole layer
    def layer(self, prefix, x, in_site, bias):
        """encoder_layer as one run of kernel calls where the layer is plain dynamic (_LayerPlan): each
        step is the one its hook would take (qkv, attention, linear_site, add_layer_norm), on the same
        buffers, so the result is the same bits; anything else runs the hooks one by one."""
        plan = self._layer_plan(prefix, in_site)
        if (plan is None or not isinstance(x, np.ndarray) or x.dtype != np.float32 or x.ndim != 3
                or not x.flags.c_contiguous or x.shape[0] * x.shape[1] == 0):
            return super().layer(prefix, x, in_site, bias)
        B, T, C = x.shape
        M, h = B * T, self.cfg.num_attention_heads
        stacked = plan.qkv is not None and self.FUSE_QKV and M <= self.FUSE_QKV_MAX_ROWS  # as qkv() decides
        if stacked and not (self.FUSE_QKV_HEADS and plan.same_specs):
            return super().layer(prefix, x, in_site, bias)  # (the heads one block at a time: the hooks')
        seg, valid = self._segs(x, M)
        if self.LAYER_CORE and plan.core_probs and T <= kg.K_MAX_U8S8:  # (else _context_int refuses, naming why)
            y = self._layer_core(plan, x.reshape(M, C), seg, valid, stacked, B, T, bias, in_site)
            return super().layer(prefix, x, in_site, bias) if y is None else y.reshape(B, T, C)
        codes, rs = self._rows_codes(in_site, x.reshape(M, C), seg, valid, plan.in_spec, True)
        if stacked:  # q, k, v = x W_qkv^T + b [M, 3C], then their head-major codes in one call (_dynamic's split)
            y = _dequant_dynamic(codes, rs, plan.qkv, fused.ACT_NONE, self.buffer(plan.qkv_out, (M, 3 * C), np.float32))
            q3, rs3 = self._head_codes(f"codes:{plan.attn}.qkv", y, self._block_starts(3, C), C, h, T, seg, valid,
                                       plan.parts[0][2])
            heads = [(q3[i], rs3[i].reshape(B, T)[:, 0]) for i in range(3)]
        else:  # three GEMMs [M, C] and each one's head-major codes (qkv() past the row bound, _dynamic's one block)
            heads = [self._one_head_block(name, w, spec, codes, rs, B, T, seg, valid) for name, w, spec in plan.parts]
        (q8, sq), (k8, sk), (v8, sv) = heads
        ctx = self._attention_int(plan.attn, q8, sq, k8, sk, v8, sv, bias, plan.probs_qp)  # [B, T, C]
        # the attention output projection, residual + LayerNorm, FF1 + activation, FF2, residual + LayerNorm
        a = self._linear_rows(plan, 0, ctx.reshape(M, C), seg, valid)
        x1 = self._add_ln_into(*plan.norms[0], a, x.reshape(M, C))[1]
        g = self._linear_rows(plan, 1, x1, seg, valid)
        f2 = self._linear_rows(plan, 2, g, seg, valid)
        return self._add_ln_into(*plan.norms[1], f2, x1)[1].reshape(B, T, C)

    def _layer_core(self, plan: "_LayerPlan", x2: np.ndarray, seg, valid, stacked: bool, B: int, T: int, bias, in_site):
        """layer()'s kernel sequence as one compiled call (kernels.layer.dynamic_layer_into) on the
        buffers the steps below use. Returns the output [M, C], or None where a quantizer met NaN/Inf
        (x2 is intact: the caller re-runs the hooks, which raise naming the site and the token)."""
        M, C = x2.shape
        h, I = self.cfg.num_attention_heads, self.cfg.intermediate_size
        d, arr = C // h, self._array
        if stacked:
            y_q = y_k = y_v = arr(plan.qkv_out, (M, 3 * C), np.float32)
            hq_q = hq_k = hq_v = arr(f"codes:{plan.attn}.qkv", (3, B * h * T, d), np.int8)
            rs_q = rs_k = rs_v = np.empty((3, M), np.float32)
            w_q = w_k = w_v = plan.core_weights[0]
        else:
            y_q, y_k, y_v = (arr("out:" + n, (M, C), np.float32) for n, _, _ in plan.parts)
            hq_q, hq_k, hq_v = (arr(f"codes:{n}.out", (1, B * h * T, d), np.int8) for n, _, _ in plan.parts)
            rs_q, rs_k, rs_v = (np.empty((1, M), np.float32) for _ in range(3))
            w_q, w_k, w_v = plan.core_weights[1:4]
        (o_in, o_name, *_), (f1_in, f1_name, *_), (f2_in, f2_name, *_) = plan.linears
        (add1, ln1), (add2, ln2) = plan.norms
        zp, lo, hi, sc = _prepared(self.qm.prepared, ("softmax-grid", plan.probs_qp), lambda: _softmax_grid(plan.probs_qp))
        key, rel, has_rel = self._softmax_bias(bias, B, h, T)
        ctx = arr("ctx:" + plan.attn, (M, C), np.float32)
        x1 = arr(ln1 + ".out", (M, C), np.float32)
        y = arr(ln2 + ".out", (M, C), np.float32)
        p = self.params
        code = kl.dynamic_layer_into(
            x2, seg, valid, T, h, stacked, plan.core_specs[0][0], plan.core_specs[1], plan.core_specs[2], plan.core_act,
            w_q, w_k, w_v, *plan.core_weights[4:], self._block_starts(3 if stacked else 1, C), np.float32(1.0 / np.sqrt(d)),
            key, rel, has_rel, sc, lo, hi, zp, int(plan.probs_qp.zero_point),
            (p[ln1 + ".weight"], p[ln1 + ".bias"]), (p[ln2 + ".weight"], p[ln2 + ".bias"]), float(self.cfg.layer_norm_eps),
            arr("codes:" + in_site, (M, C), np.uint8), y_q, y_k, y_v, hq_q, hq_k, hq_v, rs_q, rs_k, rs_v,
            self.qm.scratch("scores", (B * h, T, T), np.int32), arr(f"codes:{plan.attn}.probs", (B * h * T, T), plan.probs_qp.int_dtype),
            self.qm.scratch("context", (B * h, T, d), np.int32), ctx,
            arr("codes:" + o_in, (M, C), np.uint8), arr("out:" + o_name, (M, C), np.float32),
            arr(add1, (M, C), np.float32), x1,
            arr("codes:" + f1_in, (M, C), np.uint8), arr("out:" + f1_name, (M, I), np.float32),
            arr("codes:" + f2_in, (M, I), np.uint8), arr("out:" + f2_name, (M, C), np.float32),
            arr(add2, (M, C), np.float32), y)
        return y if code == kl.OK else None

    def _one_head_block(self, name: str, w: QWeight, spec: SiteSpec, codes, rs, B: int, T: int, seg, valid):
        """One of q, k, v on its own: linear `name` of the layer input's codes [M, C] into its output
        buffer, then that output's head-major codes [B, h, T, d] and per-sequence scales [B]."""
        y = _dequant_dynamic(codes, rs, w, fused.ACT_NONE, self.buffer("out:" + name, (B * T, w.packed.n), np.float32))
        q, row_scale = self._head_codes(f"codes:{name}.out", y, self._block_starts(1, y.shape[1]), y.shape[1],
                                        self.cfg.num_attention_heads, T, seg, valid, spec)
        return q[0], row_scale[0].reshape(B, T)[:, 0]

    def _linear_rows(self, plan: "_LayerPlan", j: int, x2: np.ndarray, seg, valid) -> np.ndarray:
        """Linear j of the layer's three after attention (output projection, FF1 + act, FF2) on float32
        x2 [M, K]: its input's dynamic uint8 codes, then the dequantizing GEMM into its output buffer."""
        in_site, name, w, spec, act_code = plan.linears[j]
        codes, rs = self._rows_codes(in_site, x2, seg, valid, spec, True)
        return _dequant_dynamic(codes, rs, w, act_code, self.buffer("out:" + name, (x2.shape[0], w.packed.n), np.float32))

    def _add_ln_into(self, add_name: str, ln_name: str, a2: np.ndarray, b2: np.ndarray):
        """(a2 + b2, LayerNorm ln_name of it) [M, C] for float32 C-contiguous operands [M, C], into the two
        sites' buffers (fresh arrays where they have none: the last layer's output, taps):
        fused.add_layer_norm's unchecked entry."""
        s2, y2 = (self._array(n, a2.shape, np.float32) for n in (add_name, ln_name + ".out"))
        fused.add_layer_norm_into(a2, b2, self.params[ln_name + ".weight"], self.params[ln_name + ".bias"],
                                  self.cfg.layer_norm_eps, s2, y2)
        return s2, y2

    def _layer_plan(self, prefix: str, in_site: str) -> "_LayerPlan | None":
        """The layer's fixed arguments when layer() may run it at once, else None. The model's part is
        worked out once (qm.prepared); the switches are read on every call (A/Bs flip them)."""
        if not (self.FUSE_LAYERS and not self.sim and self.REUSE_OUTPUTS and self.DYN_UNSIGNED_CODES
                and self.FUSE_GEMM_DEQUANT and self.FUSE_SOFTMAX):
            return None
        if type(self).site is not QuantExecutor.site or type(self)._emit is not QuantExecutor._emit:
            return None  # a subclass that watches site values gets them from the hooks
        return _prepared(self.qm.prepared, ("layer-plan", prefix, in_site), lambda: _LayerPlan.build(self.qm, prefix, in_site))

    # ---- attention
    def _heads_codes(self, name: str, x):
        """A q/k/v value -> (codes int8 [B, h, T, d] C-contiguous, per-sequence scale [B]) or None if kept
        in float. Dynamic codes are written head-major by their quantizer; static ones are transposed."""
        B, T, C = (x.q.shape if isinstance(x, QTensor) else x.shape)
        h = self.cfg.num_attention_heads
        if isinstance(x, QTensor):
            if x.qp.granularity != "tensor" or x.qp.int_dtype != np.int8:
                raise QuantError(f"{name}: attention operands must be signed 8-bit per tensor")
            codes, scale = x.q, np.full(B, x.qp.scale, np.float32)
        else:
            spec = self.qm.specs[name]
            if spec.mode != "dynamic" or spec.bits > 8:
                return None
            codes, row_scale = self._dynamic(name, x, spec, heads=h)
            scale = row_scale.reshape(B, T)[:, 0]
            if codes.ndim == 4:  # already [B, h, T, d]
                return codes, scale
        return np.ascontiguousarray(codes.reshape(B, T, h, C // h).transpose(0, 2, 1, 3)), scale

    def attention(self, prefix, q, k, v, bias):
        qc, kc, vc = (self._heads_codes(f"{prefix}.{n}.out", t) for n, t in (("query", q), ("key", k), ("value", v)))
        probs_qp = self.qm.site_qparams.get(prefix + ".probs")
        if qc is None or kc is None or vc is None or probs_qp is None:
            return self._attention_float(prefix, q, k, v, bias)
        (q8, sq), (k8, sk), (v8, sv) = qc, kc, vc
        if (self.FUSE_SOFTMAX and not self.sim and prefix + ".scores" not in self.qm.site_qparams
                and probs_qp.granularity == "tensor"):
            return self._attention_int(prefix, q8, sq, k8, sk, v8, sv, bias, probs_qp)
        B, h, T, d = q8.shape
        # scores = Q K^T: [B*h, T, d] x [B*h, T, d] -> int32 [B*h, T, T]
        if self.sim:
            acc = np.matmul(q8.astype(np.float64), k8.astype(np.float64).transpose(0, 1, 3, 2))
        else:
            acc = kg.bgemm_s8s8(q8.reshape(B * h, T, d), k8.reshape(B * h, T, d),
                                out=self.qm.scratch("scores", (B * h, T, T), np.int32))
            acc = acc.reshape(B, h, T, T)
        seq_scale = (sq * sk * np.float32(1.0 / np.sqrt(d))).astype(np.float32)  # [B]
        scores = acc.astype(np.float32) * seq_scale[:, None, None, None]
        scores = self.f(self.site(prefix + ".scores", scores)) + bias
        p = self._emit(prefix + ".probs", self._quantize_static(fused.softmax_rows(scores, self.PARALLEL_FLOAT_KERNELS),
                                                                probs_qp))
        # context = P V: [B*h, T, T] x [B*h, d, T] -> int32 [B*h, T, d]
        if self.sim:
            ctx = np.matmul(dequantize(p.q, probs_qp).astype(np.float64), v8.astype(np.float64))
            ctx = ctx.astype(np.float32) * sv[:, None, None, None]
            return ops.merge_heads(ctx)
        return self._context_int(prefix, p, v8, sv)

    def _attention_int(self, prefix, q8, sq, k8, sk, v8, sv, bias, probs_qp: QParams):
        """The integer attention with the fused softmax: head-major int8 codes q8, k8, v8 [B, h, T, d]
        C-contiguous with per-sequence scales [B] -> context float32 [B, T, h*d]. QK^T and softmax ->
        probability codes run through the kernels' unchecked entries on arguments built here."""
        B, h, T, d = q8.shape
        # scores = Q K^T: [B*h, T, d] x [B*h, T, d] -> int32 [B*h, T, T]
        acc = kg.bgemm_into(q8.reshape(B * h, T, d), 0, k8.reshape(B * h, T, d), False,
                            self.qm.scratch("scores", (B * h, T, T), np.int32))
        seq_scale = (sq * sk * np.float32(1.0 / np.sqrt(d))).astype(np.float32)  # [B]
        codes = self._array("codes:" + prefix + ".probs", (B, h, T, T), probs_qp.int_dtype)
        zp, lo, hi, sc = _prepared(self.qm.prepared, ("softmax-grid", probs_qp), lambda: _softmax_grid(probs_qp))
        fused.softmax_quantize_into(acc.reshape(B * h * T, T), seq_scale, *self._softmax_bias(bias, B, h, T), sc, lo, hi,
                                    zp, codes.reshape(B * h * T, T))
        return self._context_int(prefix, self._emit(prefix + ".probs", QTensor(codes, probs_qp)), v8, sv)

    def _context_int(self, prefix: str, p: QTensor, v8: np.ndarray, sv: np.ndarray) -> np.ndarray:
        """context = P V: probability codes p [B, h, T, T] x v8 [B, h, T, d] -> int32 [B*h, T, d] -> float32
        [B, T, h*d] scaled by p's scale times sv [B] per sequence."""
        B, h, T, d = v8.shape
        zp = int(p.qp.zero_point)
        v3 = v8.reshape(B * h, T, d)  # V as stored: [T, d] per head, packed transposed (b_kn)
        pc = np.ascontiguousarray(p.q).reshape(B * h, T, T)
        out = self.qm.scratch("context", (B * h, T, d), np.int32)
        if not ((pc.dtype == np.uint8 and 0 <= zp <= 255) or (pc.dtype == np.int8 and zp == 0)) or T > kg.K_MAX_U8S8:
            raise QuantError(f"{prefix}.probs: the context GEMM takes 8-bit probability codes (uint8, or int8 with zero "
                             f"point 0) over at most {kg.K_MAX_U8S8} tokens; got {pc.dtype} codes with zero point {zp} "
                             f"over {T}: quantize the probabilities to 8 bits or fewer")
        acc = kg.bgemm_into(pc, zp, v3, True, out)
        ctx = self._array("ctx:" + prefix, (B, T, h * d), np.float32)
        fused.merge_heads_into(acc, np.ascontiguousarray(np.float32(p.qp.scale) * sv, np.float32), h, ctx)
        return ctx

    def _softmax_bias(self, bias: np.ndarray, B: int, h: int, T: int):
        """fused.softmax_bias_args of the forward's attention bias, built once per forward (every
        layer reads the same)."""
        hit = self._bias_args
        if hit is None or hit[0] is not bias or hit[1] != (B, h, T):
            hit = self._bias_args = (bias, (B, h, T), fused.softmax_bias_args(np.asarray(bias, np.float32), B, h, T, T))
        return hit[2]

    def _attention_float(self, prefix, q, k, v, bias):
        hh = self.cfg.num_attention_heads
        qh, kh, vh = (ops.split_heads(np.asarray(self.f(t), np.float32), hh) for t in (q, k, v))
        scores = qh @ kh.transpose(0, 1, 3, 2) * np.float32(1.0 / np.sqrt(qh.shape[-1]))
        scores = self.f(self.site(prefix + ".scores", scores)) + bias
        p = self.f(self.site(prefix + ".probs", fused.softmax_rows(scores, parallel=False)))  # between BLAS GEMMs
        return ops.merge_heads(p @ vh)

    # ---- residual sums
    def add(self, name, a, b):
        qp = self.qm.site_qparams.get(name)
        if (qp is None or not isinstance(a, QTensor) or not isinstance(b, QTensor)
                or a.qp.granularity == "channel" or b.qp.granularity == "channel"):
            return self.site(name, self.f(a) + self.f(b))
        if self.sim:  # the integer add rescales each operand in float64: simulate exactly that
            return self._emit(name, QTensor(_add_requant_sim(a, b, qp), qp))
        return self._emit(name, QTensor(_add_requant_int(a, b, qp), qp))

    def add_layer_norm(self, add_name, ln_name, a, b):
        qp = self.qm.site_qparams.get(add_name)
        if qp is None:
            if (not self.sim and isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.shape == b.shape and a.size
                    and a.dtype == np.float32 and b.dtype == np.float32 and a.flags.c_contiguous and b.flags.c_contiguous):
                C = a.shape[-1]  # float operands: the unchecked entry (the simulation keeps BLAS's one thread: super)
                s2, y2 = self._add_ln_into(add_name, ln_name, a.reshape(-1, C), b.reshape(-1, C))
                s, y = s2.reshape(a.shape), y2.reshape(a.shape)
                s_site = self.site(add_name, s)
                return self.layer_norm(ln_name, s_site) if s_site is not s else self.site(ln_name + ".out", y)
            return super().add_layer_norm(add_name, ln_name, a, b)
        out_qp = self.qm.site_qparams.get(ln_name + ".out")
        if self.FUSE_RESIDUAL_LN and not self.sim and _fusable_residual(a, b, qp, out_qp):
            return QTensor(_residual_ln_int(a, b, qp, out_qp, self.params[ln_name + ".weight"],
                                            self.params[ln_name + ".bias"], self.cfg.layer_norm_eps, self.qm.prepared), out_qp)
        return self.layer_norm(ln_name, self.add(add_name, a, b))  # the sum is quantized: its own steps

    def _emit(self, name: str, value):
        """A site value produced without passing site() (integer adds, probs): a hook for taps."""
        return value


@dataclasses.dataclass
class _LayerPlan:
    """What QuantExecutor.layer needs of one encoder layer, fixed per model: built only where every
    step of the layer is the plain dynamic one (see build)."""

    attn: str  # prefix.attention.self
    qkv_out: str  # the stacked GEMM's buffer name
    in_spec: SiteSpec  # the layer input's (qkv's input) spec
    qkv: QWeight | None  # the stacked q/k/v weight, if the model has one (QuantizedModel._fuse_qkv)
    same_specs: bool  # q, k and v's output sites share one spec (their codes in one call)
    parts: tuple  # 3 x (prefix.attention.self.{query,key,value}, its QWeight, its output site's spec)
    probs_qp: QParams
    linears: tuple  # 3 x (input site, linear name, QWeight, input spec, activation code)
    norms: tuple  # 2 x (residual site, LayerNorm name)
    # kernels.layer.dynamic_layer_into's forms: weights (stacked qkv or None, q, k, v, output, FF1, FF2) as
    # quads_args, specs ((input,), (q, k, v outputs), (the three linears' inputs)) as (bits, tmiqr), FF1's act code
    core_weights: tuple
    core_specs: tuple
    core_act: int
    core_probs: bool  # 8-bit probability codes (uint8, or int8 with zero point 0), what the context GEMM takes

    @staticmethod
    def build(qm: "QuantizedModel", p: str, in_site: str) -> "_LayerPlan | None":
        """The plan, or None where a step of the layer is not the plain dynamic one: a static site other
        than the probabilities, codes over 8 bits or as int8 (K past the uint8 bound), weights not on
        quad panels, an activation without a code."""
        cfg, specs, static = qm.config, qm.specs, qm.site_qparams
        C, I = cfg.hidden_size, cfg.intermediate_size
        attn = f"{p}.attention.self"
        qkv_outs = [f"{attn}.{n}.out" for n in QKV_PROJECTIONS]
        lin = [(f"{p}.attention.output.dense.in", f"{p}.attention.output.dense"),
               (f"{p}.attention.output.LayerNorm.out", f"{p}.intermediate.dense"),
               (f"{p}.output.dense.in", f"{p}.output.dense")]
        outs = [f"{p}.attention.output.dense.out", f"{p}.attention.output.residual", f"{p}.output.dense.out",
                f"{p}.output.residual", f"{p}.output.LayerNorm.out", f"{attn}.scores"]
        probs_qp = static.get(f"{attn}.probs")
        qkv = qm.qkv_weights.get(attn)
        parts = [qm.qweights.get(f"{attn}.{n}") for n in QKV_PROJECTIONS]
        weights = [qm.qweights.get(n) for _, n in lin]
        dyn8 = [specs.get(s) for s in [in_site, *qkv_outs, *(s for s, _ in lin)]]
        if (probs_qp is None or probs_qp.granularity != "tensor" or any(w is None for w in [*parts, *weights])
                or any(sp is None or sp.mode != "dynamic" or sp.bits > 8 for sp in dyn8)
                or any(s in static for s in [in_site, *qkv_outs, *(s for s, _ in lin), *outs])
                or any(w.packed.layout != "quads" or not w.packed.kq for w in [*parts, *weights])
                or (qkv is not None and (qkv.packed.layout != "quads" or (qkv.packed.n, qkv.packed.k) != (3 * C, C)))
                or [(w.packed.n, w.packed.k) for w in [*parts, *weights]] != [(C, C)] * 3 + [(C, C), (I, C), (C, I)]
                or max(C, I) > kg.K_MAX_U8S8
                or cfg.hidden_act not in fused.ACT_CODES):
            return None
        act = fused.ACT_CODES[cfg.hidden_act]
        linears = tuple((s, n, w, specs[s], act if j == 1 else fused.ACT_NONE) for j, ((s, n), w) in enumerate(zip(lin, weights)))
        norms = tuple((f"{p}.{r}.residual", f"{p}.{r}.LayerNorm") for r in ("attention.output", "output"))
        parts = tuple((f"{attn}.{n}", w, specs[o]) for n, w, o in zip(QKV_PROJECTIONS, parts, qkv_outs))
        core_weights = tuple(None if w is None else kl.quads_args(w.packed, w.scale, w.bias)
                             for w in [qkv, *(w for _, w, _ in parts), *weights])
        core_specs = tuple(tuple((int(sp.bits), bool(sp.tmiqr)) for sp in group)  # input; q, k, v outputs; linears' inputs
                           for group in ([specs[in_site]], [specs[o] for o in qkv_outs], [specs[s] for s, _ in lin]))
        return _LayerPlan(attn, f"out:{attn}.qkv", specs[in_site], qkv, _one_spec(specs, qkv_outs), parts, probs_qp, linears,
                          norms, core_weights, core_specs, act,
                          (probs_qp.int_dtype == np.uint8 and 0 <= probs_qp.zero_point <= 255)
                          or (probs_qp.int_dtype == np.int8 and probs_qp.zero_point == 0))


def _one_spec(specs: dict, sites: list) -> bool:
    """Whether the sites share one SiteSpec (q, k and v: their head codes then come from one call)."""
    return all(specs[s] == specs[sites[0]] for s in sites)


def _softmax_grid(qp: QParams) -> tuple:
    """softmax_quantize_into's (zero point, qmin - zp, qmax - zp, scale) as float32, as softmax_quantize
    derives them."""
    zp = int(qp.zero_point)
    return np.float32(zp), np.float32(qp.qmin - zp), np.float32(qp.qmax - zp), np.float32(qp.scale)


def _dequant_dynamic(codes: np.ndarray, row_scale: np.ndarray, w: QWeight, act_code: int, out: np.ndarray) -> np.ndarray:
    """A linear's float output [M, N] from dynamic codes [M, K] (built by _dynamic: uint8 / int8, K
    within the kernel's limit, M >= 1) and their row scales [M] on quad panels: gemm_dequant's own call
    without its checks (QWeight settles the weight's scale and bias)."""
    M = codes.shape[0]
    rs = np.zeros(-(-M // kg.MR) * kg.MR)  # float64, rows padded to whole tiles with 0
    rs[:M] = row_scale
    return kg.dequant_into(codes, _codes_zp(codes, None), w.packed, rs, w.scale, w.bias, act_code, out)


def _codes_zp(codes: np.ndarray, qp: QParams | None) -> int:
    """The zero point of a linear's input codes: the static grid's; for dynamic codes (qp None) 0, or
    kq.UNSIGNED_ZP for the unsigned form (int8 codes never carry one: gemm_s8s8 takes none)."""
    if qp is None:
        return kq.UNSIGNED_ZP if codes.dtype == np.uint8 else 0
    return int(qp.zero_point) if codes.dtype != np.int8 else 0


def _group_view(t: QTensor, bounds: np.ndarray):
    """Per-group (scale, zp) of a QTensor for the column groups `bounds` (per tensor broadcasts)."""
    G = len(bounds) - 1
    if t.qp.granularity == "tensor":
        return np.full(G, t.qp.scale, np.float64), np.full(G, t.qp.zero_point, np.int64)
    if not np.array_equal(t.qp.group_bounds, bounds):
        raise QuantError("residual operands use different group bounds; PEG sites must share one grouping")
    return t.qp.scale.astype(np.float64), t.qp.zero_point.astype(np.int64)


def _out_groups(qp: QParams, C: int) -> np.ndarray:
    return qp.group_bounds if qp.granularity == "group" else np.array([0, C], np.int64)


def _add_requant_int(a: QTensor, b: QTensor, qp: QParams) -> np.ndarray:
    C = a.q.shape[-1]
    bounds = _out_groups(qp, C)
    if qp.granularity == "tensor" and a.qp.granularity == "tensor" and b.qp.granularity == "tensor":
        return kq.add_requant(a.q, float(a.qp.scale), int(a.qp.zero_point), b.q, float(b.qp.scale), int(b.qp.zero_point),
                              float(qp.scale), int(qp.zero_point), qp.qmin, qp.qmax, qp.int_dtype)
    # Per-group: each contiguous column group with its own rescale, one kernel pass over all groups.
    sa, za = _group_view(a, bounds)
    sb, zb = _group_view(b, bounds)
    G = len(bounds) - 1
    so = np.broadcast_to(np.asarray(qp.scale, np.float64), (G,))
    zo = np.broadcast_to(qp.zero_point, (G,))
    return kq.add_requant_grouped(a.q, sa, za, b.q, sb, zb, so, zo, bounds, qp.qmin, qp.qmax, qp.int_dtype)


def _fusable_residual(a, b, qp: QParams, out_qp: QParams | None) -> bool:
    """The integer add of QuantExecutor.add (two QTensors, no per-channel grids) whose LayerNorm output
    is statically quantized per tensor / per group, every group contiguous (no runtime permutation)."""
    if out_qp is None or not (isinstance(a, QTensor) and isinstance(b, QTensor)):
        return False
    # the dtypes the unfused integer add and quantizer accept (add_requant, quantize_static_grouped)
    return (all(_contiguous_grid(p) for p in (a.qp, b.qp, qp)) and _contiguous_grid(out_qp, _GRID_CODES)
            and all(p.int_dtype in _ADD_CODES for p in (a.qp, b.qp, qp)))


def _contiguous_grid(qp: QParams, dtypes=None) -> bool:
    """Per tensor, or per group over contiguous columns of the last axis (no runtime permutation):
    the grids the fused kernels take; optionally also one of `dtypes`."""
    return (qp.granularity in ("tensor", "group") and qp.perm is None and qp.axis in (None, -1)
            and (dtypes is None or np.dtype(qp.int_dtype) in dtypes))


def _out_grid(qp: QParams, N: int, cache: dict) -> "fused.OutGrid":
    """qp as the fused kernels' OutGrid over N columns, built (and checked) once per QParams object."""
    return _prepared(cache, ("grid", qp, N), lambda: fused.OutGrid(_out_groups(qp, N), qp.scale, qp.zero_point,
                                                                   qp.qmin, qp.qmax, qp.int_dtype))


def _prepared(cache: dict, key: tuple, build):
    """build(), once per key in `cache` (a QuantizedModel's): objects in the key count by identity
    (QParams hash their arrays' bytes, which cost more per lookup than the kernels they feed at
    batch 1), and the entry keeps them, so an id is never reused while its entry lives."""
    ident = tuple(k if isinstance(k, (str, int)) else id(k) for k in key)
    hit = cache.get(ident)
    if hit is not None and all(x is y or (isinstance(y, (str, int)) and x == y) for x, y in zip(hit[0], key)):
        return hit[1]
    value = build()
    cache[ident] = (key, value)
    return value


_ADD_CODES = (np.dtype(np.int8), np.dtype(np.uint8), np.dtype(np.int16))
_GRID_CODES = (*_ADD_CODES, np.dtype(np.uint16))


def _residual_ln_int(a: QTensor, b: QTensor, qp: QParams, out_qp: QParams, gamma, beta, eps, cache: dict) -> np.ndarray:
    C = a.q.shape[-1]

    def grids():  # everything but the codes depends on the four grids only: prepared once
        bounds = _out_groups(qp, C)
        sa, za = _group_view(a, bounds)
        sb, zb = _group_view(b, bounds)
        G = len(bounds) - 1
        s_scale = np.ascontiguousarray(np.broadcast_to(np.asarray(qp.scale, np.float32), (G,)))
        so = s_scale.astype(np.float64)
        s_zp = np.broadcast_to(np.asarray(qp.zero_point, np.float64), (G,)).copy()
        return (bounds, za, sa / so, zb, sb / so, s_zp, s_scale, qp.qmin, qp.qmax, gamma, beta, eps,
                _out_grid(out_qp, C, cache))

    args = _prepared(cache, ("residual", a.qp, b.qp, qp, out_qp, gamma, beta, C), grids)
    return fused.residual_layer_norm_quantize(a.q, b.q, *args)


def _add_requant_sim(a: QTensor, b: QTensor, qp: QParams) -> np.ndarray:
    C = a.q.shape[-1]
    bounds = _out_groups(qp, C)
    sa, za = _group_view(a, bounds)
    sb, zb = _group_view(b, bounds)
    so = np.broadcast_to(qp.scale, (len(bounds) - 1,)).astype(np.float64)
    zo = np.broadcast_to(qp.zero_point, (len(bounds) - 1,))
    out = np.empty(a.q.shape, qp.int_dtype)
    for g in range(len(bounds) - 1):
        s = slice(bounds[g], bounds[g + 1])
        out[..., s] = kref.add_requant_ref(a.q[..., s], sa[g], int(za[g]), b.q[..., s], sb[g], int(zb[g]),
                                           so[g], int(zo[g]), qp.qmin, qp.qmax, qp.int_dtype)
    return out


# -------------------------------------------------------------------------------- calibration


class _Calibrator(Executor):
    """FP32 forward that feeds every static site's estimator (padding masked out)."""

    def __init__(self, params, cfg, estimators: dict):
        super().__init__(params, cfg)
        self.estimators = estimators

    def site(self, name, x):
        est = self.estimators.get(name)
        if est is not None and x is not None:
            x = np.asarray(x, np.float32)
            mask = None
            if x.ndim == 3 and self.mask is not None:
                mask = self.mask
            elif x.ndim == 4 and self.mask is not None:  # attention scores/probs [B, h, T, T]
                m = self.mask.astype(bool)
                mask = np.broadcast_to(m[:, None, :, None] & m[:, None, None, :], x.shape)
            est.update(x, mask)
        return x

    def attention(self, prefix, q, k, v, bias):
        hh = self.cfg.num_attention_heads
        qh, kh, vh = (ops.split_heads(t, hh) for t in (q, k, v))
        scores = qh @ kh.transpose(0, 1, 3, 2) * np.float32(1.0 / np.sqrt(qh.shape[-1]))
        self.site(prefix + ".scores", scores)
        p = fused.softmax_rows(scores + bias, self.PARALLEL_FLOAT_KERNELS)
        self.site(prefix + ".probs", p)
        return ops.merge_heads(p @ vh)


# ---------------------------------------------------------------------------- the quantized model


class QuantizedModel(Model):
    """A Model whose executor runs a recipe. params are the FP32 params after any PEG permutation fold."""

    def __init__(self, base: Model, recipe: Recipe, overrides: Sequence[tuple[str, dict]] = ()):
        super().__init__(base.config, dict(base.params), base.tokenizer, base.pooling, base.source)
        self.recipe = recipe
        self.overrides = tuple(overrides)
        self.sites, self.linear_inputs = discover_sites(base)
        for pattern, _ in self.overrides:
            if not any(fnmatch.fnmatchcase(s, pattern) for s in self.sites):
                raise QuantError(f"override pattern {pattern!r} matches no site; sites look like {self.sites[3]!r}, "
                                 f"{self.sites[-2]!r} (see `npbert quantize --list-sites`)")
        self.specs = {s: recipe.spec(s, self.overrides) for s in self.sites}
        self.site_qparams: dict[str, QParams] = {}
        self.perm: np.ndarray | None = None
        self.qweights: dict[str, QWeight] = {}
        self.qkv_weights: dict[str, QWeight] = {}  # per attention prefix: query, key, value stacked (_fuse_qkv)
        self.word_emb: tuple[np.ndarray, np.ndarray] | None = None  # (int8 [V, C], float32 [V]) with emb=int8
        self.calibrated = False
        self.float_weights_released = False
        self._scratch_local = threading.local()
        self.prepared: dict = {}  # kernel arguments derived from fixed grids (_prepared), per model
        self.roles: dict = {}  # QuantExecutor.buffer's value name -> scratch role (or None), per model
        for s, sp in self.specs.items():
            if sp.mode == "static" and sp.fixed_range is not None:
                self.site_qparams[s] = qparams_from_range(*sp.fixed_range, sp.bits, sp.symmetric)

    def release_scratch(self) -> None:
        """Drop the calling thread's reusable buffers (they only grow: a batch of 64 x 512 tokens leaves
        hundreds of MB behind until the model or the thread goes away); the next forward reallocates."""
        self._scratch_local.bufs = {}
        self._scratch_local.views = {}

    def scratch(self, role: str, shape: tuple, dtype) -> np.ndarray:
        """A reusable buffer per (thread, role): grow-only flat storage viewed as `shape`. For values
        consumed before the role is asked for again (accumulators, QuantExecutor.buffer's roles), never
        for values that escape a forward. Allocating them fresh cost ~15% of a MiniLM forward in page faults.
        The views are kept too (one dict lookup per call: a forward asks ~100 times), and dropped
        whenever a buffer grows, so that every view of a role reads its current storage."""
        local = self._scratch_local
        views = getattr(local, "views", None)
        if views is None:
            views = local.views = {}
            local.bufs = getattr(local, "bufs", None) or {}
        key = (role, shape, dtype)
        view = views.get(key)
        if view is not None:
            return view
        ws = local.bufs
        n = math.prod(shape)
        buf = ws.get((role, dtype))
        if buf is None or buf.size < n:
            buf = ws[(role, dtype)] = kg.aligned_empty(n, dtype)  # tile rows on whole cache lines
            views.clear()
        if len(views) > 4096:  # many shapes (evaluation over varied lengths): start afresh
            views.clear()
        view = views[key] = buf[:n].reshape(shape)
        return view

    @property
    def static_sites(self) -> list[str]:
        return [s for s, sp in self.specs.items() if sp.mode == "static" and sp.fixed_range is None]

    @property
    def group_sites(self) -> list[str]:
        return [s for s in self.static_sites if self.specs[s].granularity == "group"]

    def executor(self, simulate: bool = False) -> QuantExecutor:
        if self.static_sites and not self.calibrated:
            raise CalibrationError(f"recipe {self.recipe.name!r} has static sites: call calibrate(model, texts) first")
        return QuantExecutor(self, simulate)

    def forward(self, batch: Batch, executor: Executor | None = None) -> Output:
        out = super().forward(batch, executor or self.executor())
        if self.perm is not None:  # the residual stream runs in permuted order: restore HF's order
            out.last_hidden_state = out.last_hidden_state[..., peg.inverse_permutation(self.perm)]
        return out

    # ---- calibration
    def calibrate(self, batches: Iterable[Batch], progress: bool = False) -> "QuantizedModel":
        if self.float_weights_released:
            raise CalibrationError("this model's FP32 linear weights were replaced by their int8 codes when it was "
                                   "quantized; calibrate a fresh one: quantize_model(fp32_model, recipe, calibration=...)")
        sites = self.static_sites
        C = self.config.hidden_size
        ests = {}
        for s in sites:
            sp = self.specs[s]
            axis = -1 if sp.granularity == "group" else None
            ests[s] = make_estimator(sp.estimator, bits=sp.bits, symmetric=sp.symmetric, axis=axis)
        cal = _Calibrator(self.params, self.config, ests)
        n_seq = 0
        batches = list(batches)
        from npbert.progress import Progress

        with Progress(len(batches), "calibrating", enabled=progress) as bar:
            for b in batches:
                Model.forward(self, b, cal)
                n_seq += len(b)
                bar.update(1)
        if n_seq == 0:
            raise CalibrationError("the calibration set is empty; pass at least one text (e.g. --calib-size 128)")
        groups = self.recipe.peg_groups
        if self.group_sites and n_seq < groups:
            raise CalibrationError(
                f"PEG with {groups} groups needs at least {groups} calibration sequences to rank the hidden "
                f"dims by range; got {n_seq}. Pass more calibration texts or fewer groups"
            )
        ranges = {}
        for s, e in ests.items():
            try:
                ranges[s] = e.range()
            except CalibrationError:
                raise CalibrationError(f"site {s}: no valid (unpadded) values seen during calibration") from None
        if self.group_sites:
            if self.recipe.peg_permute:
                # One permutation for the whole residual stream: it folds into every weight that reads or
                # writes it, so run time pays nothing. Each dim is ranked by its range relative to its
                # site's median range, maximised over the PEG sites: raw ranges would let the site of
                # largest magnitude (the residual sum) decide the grouping of all the others alone.
                rel = [(ranges[s][1] - ranges[s][0]) / max(float(np.median(ranges[s][1] - ranges[s][0])), 1e-12)
                       for s in self.group_sites]
                score = np.max(rel, axis=0)  # [C]
                self.perm = peg.range_permutation(score)
                self.params = fold_permutation(self.params, self.config, self.perm)
            if self.recipe.peg_split == "range":  # group sizes fitted to the sorted ranges (permute=1 only)
                bounds = peg.range_optimal_bounds(score[self.perm], groups)
            else:
                bounds = group_bounds_equal(C, groups)
            for s in self.group_sites:
                lo, hi = ranges[s]
                if self.perm is not None:
                    lo, hi = lo[self.perm], hi[self.perm]
                glo, ghi = np.minimum.reduceat(lo, bounds[:-1]), np.maximum.reduceat(hi, bounds[:-1])
                self.site_qparams[s] = qparams_from_range(glo, ghi, self.specs[s].bits, self.specs[s].symmetric,
                                                          axis=-1, group_bounds=bounds)
        for s in sites:
            if s not in self.site_qparams:
                sp = self.specs[s]
                self.site_qparams[s] = qparams_from_range(*ranges[s], sp.bits, sp.symmetric)
        self.calibrated = True
        self.prepared.clear()  # prepared from the previous grids
        self._quantize_weights()
        return self

    def _quantize_weights(self) -> None:
        """int8 codes of every linear weight; the FP32 copies leave `params` (a quantized model holds
        one byte per linear weight, not five). Needed FP32 values come from the FP32 model."""
        r = self.recipe
        self.qweights = {
            n: quantize_weight(self.params[n + ".weight"], self.params[n + ".bias"], r.weight_bits, r.weight_granularity,
                               r.weight_estimator)
            for n in linear_names(self.config)
        }
        drop = {n + ".weight" for n in self.qweights}
        if r.embedding_int8:
            self.word_emb = quantize_embedding_rows(self.params[WORD_EMB])
            drop.add(WORD_EMB)
        # copies, not views: the quantized model must not pin the FP32 checkpoint's memory map
        self.params = {k: np.array(v, copy=True) for k, v in self.params.items() if k not in drop}
        self.float_weights_released = True
        self._fuse_qkv()

    def _fuse_qkv(self) -> None:
        """Each layer's query, key and value weights stacked [3C, C] in qkv_weights, for one GEMM where
        the three are plain linears (QuantExecutor.qkv). The stack holds the bytes and the three
        QWeights read views of it (kernels.gemm.concat_packed; their scales and biases too), so the
        model stays one byte per weight. Layers whose three weights cannot stack are left out: a width
        not a multiple of the panel width, different panel layouts ("auto" picks per weight), or a
        bias on some of the three only. Derived from qweights: rebuild after replacing any of them."""
        self.qkv_weights = {}
        self.prepared.clear()  # (layer plans hold the QWeights)
        for i in range(self.config.num_hidden_layers):
            prefix = f"{layer_prefix(i)}.attention.self"
            parts = [self.qweights.get(f"{prefix}.{n}") for n in QKV_PROJECTIONS]
            if any(w is None for w in parts) or len({w.bias is None for w in parts}) != 1:
                continue
            packs = [w.packed for w in parts]
            if not kg.stackable(packs):
                continue
            bias = None if parts[0].bias is None else np.concatenate([w.bias for w in parts])
            stack = self.qkv_weights[prefix] = QWeight(np.concatenate([w.scale for w in parts]), bias, kg.concat_packed(packs))
            n0 = 0
            for w in parts:  # views of the stack: one copy of the scales and biases as of the bytes
                n1 = n0 + w.packed.n
                w.scale = stack.scale[n0:n1]
                w.bias = None if bias is None else stack.bias[n0:n1]
                n0 = n1

    # ---- save / load
    def save(self, out_dir: str | Path) -> Path:
        return save_quantized(self, out_dir)


class _SiteTap:
    """Mixin: remember every site's value (as float32) from one forward."""

    FUSE_SOFTMAX = False  # the float scores must pass site() to be seen
    FUSE_RESIDUAL_LN = False  # the residual sum and the float LayerNorm output must be seen
    FUSE_LINEAR_QUANT = False  # linear outputs must be seen in float
    REUSE_OUTPUTS = False  # seen values must not be overwritten by later layers

    def site(self, name, x):
        return self._emit(name, super().site(name, x))

    def _emit(self, name, value):
        if value is not None:
            self.seen[name] = np.asarray(self.f(value), np.float32)
        return value


class _FP32Tap(_SiteTap, Executor):
    def __init__(self, params, cfg):
        Executor.__init__(self, params, cfg)
        self.seen = {}

    def attention(self, prefix, q, k, v, bias):
        return _Calibrator.attention(self, prefix, q, k, v, bias)


class _QuantTap(_SiteTap, QuantExecutor):
    def __init__(self, qm, simulate=False):
        QuantExecutor.__init__(self, qm, simulate)
        self.seen = {}


_RESIDUAL_STREAM = re.compile(r"^(head\.in|embeddings\.(sum|LayerNorm\.out)|encoder\.layer\.\d+\.(attention\.output\.(dense\.out|residual|"
                              r"LayerNorm\.out)|output\.(dense\.out|residual|LayerNorm\.out)))$")


def in_residual_stream(site: str) -> bool:
    """Sites whose hidden dim is the residual stream's, i.e. the ones a PEG permutation reorders."""
    return bool(_RESIDUAL_STREAM.match(site))


def site_errors(qm: "QuantizedModel", fp32: Model, batches: Iterable[Batch], simulate: bool = False) -> dict[str, dict]:
    """Per-site error of the quantized model against FP32 over real tokens: {site: {nmse, sqnr_db}}.

    NMSE = sum (q - x)^2 / sum x^2 over unpadded positions (attention maps: valid query and key).
    Values at PEG sites are compared in the model's own (permuted) order against FP32's permuted values.
    """
    err: dict[str, list] = {}
    inv_needed = qm.perm is not None
    for b in batches:
        ref = _FP32Tap(fp32.params, fp32.config)
        Model.forward(fp32, b, ref)
        tap = _QuantTap(qm, simulate)
        Model.forward(qm, b, tap)
        m = b.attention_mask.astype(bool)
        for s, x in ref.seen.items():
            y = tap.seen.get(s)
            if y is None:
                continue
            if inv_needed and in_residual_stream(s):
                y = y[..., peg.inverse_permutation(qm.perm)]
            if x.ndim == 3:
                x, y = x[m], y[m]
            elif x.ndim == 4:
                mm = m[:, None, :, None] & m[:, None, None, :]
                mm = np.broadcast_to(mm, x.shape)
                x, y = x[mm], y[mm]
            e = err.setdefault(s, [0.0, 0.0])
            e[0] += float(np.sum((y.astype(np.float64) - x) ** 2))
            e[1] += float(np.sum(x.astype(np.float64) ** 2))
    out = {}
    for s, (num, den) in err.items():
        nmse = num / den if den > 0 else 0.0
        out[s] = {"nmse": nmse, "sqnr_db": float(-10 * np.log10(nmse)) if nmse > 0 else float("inf")}
    return out


def fold_permutation(params: dict, cfg, perm: np.ndarray) -> dict:
    """Permute the hidden dim of the residual stream in every tensor that reads or writes it.

    Writers (rows / vectors permuted): embedding tables' columns, every LayerNorm's gamma and beta,
    attention.output.dense and output.dense rows and biases. Readers (columns permuted): query, key,
    value, intermediate.dense and the head's first linear. LayerNorm statistics are permutation
    invariant, so the FP32 model computes the same numbers in permuted order.
    """
    p = dict(params)
    for name in ("embeddings.word_embeddings.weight", "embeddings.position_embeddings.weight",
                 "embeddings.token_type_embeddings.weight"):
        if name in p:
            p[name] = np.ascontiguousarray(p[name][:, perm])
    ln = ["embeddings.LayerNorm"]
    for i in range(cfg.num_hidden_layers):
        pre = layer_prefix(i)
        ln += [f"{pre}.attention.output.LayerNorm", f"{pre}.output.LayerNorm"]
        for r in ("attention.self.query", "attention.self.key", "attention.self.value", "intermediate.dense"):
            p[f"{pre}.{r}.weight"] = np.ascontiguousarray(peg.permute_linear_in(p[f"{pre}.{r}.weight"], perm))
        for w in ("attention.output.dense", "output.dense"):
            W, b = peg.permute_linear_out(p[f"{pre}.{w}.weight"], p[f"{pre}.{w}.bias"], perm)
            p[f"{pre}.{w}.weight"], p[f"{pre}.{w}.bias"] = np.ascontiguousarray(W), b
    for n in ln:
        p[n + ".weight"] = peg.permute_vector(p[n + ".weight"], perm)
        p[n + ".bias"] = peg.permute_vector(p[n + ".bias"], perm)
    for reader in ("pooler.dense", "classifier.dense") + (("classifier",) if cfg.head == "token" else ()):
        if reader + ".weight" in p:
            p[reader + ".weight"] = np.ascontiguousarray(peg.permute_linear_in(p[reader + ".weight"], perm))
    return p


def calibrate(qm: QuantizedModel, batches: Iterable[Batch] | Sequence[str], progress: bool = False,
              batch_size: int = 32) -> QuantizedModel:
    """Run calibration batches (Batch objects, or texts tokenized here) through the static sites and
    freeze their ranges; padding never enters a statistic. Deterministic for the same inputs."""
    batches = list(batches)
    if batches and isinstance(batches[0], str):
        batches = [b for _, b in qm.batches(batches, batch_size=batch_size)]
    return qm.calibrate(batches, progress=progress)


def quantize_model(
    model: Model,
    recipe: str,
    calibration=None,
    overrides: Sequence[tuple[str, dict] | str] = (),
    progress: bool = False,
    batch_size: int = 32,
    weight_granularity: str | None = None,
    peg_groups: int | None = None,
    peg_permute: bool | None = None,
) -> QuantizedModel:
    """Build a QuantizedModel. calibration: (texts, pairs | None) or a list of texts; needed by static recipes.

    weight_granularity ('tensor' | 'channel'), peg_groups and peg_permute override the recipe's defaults.
    """
    rec = get_recipe(recipe)
    changes = {k: v for k, v in (("weight_granularity", weight_granularity), ("peg_groups", peg_groups),
                                 ("peg_permute", peg_permute)) if v is not None}
    if changes.get("weight_granularity", "tensor") not in ("tensor", "channel"):
        raise QuantError(f"weight_granularity must be 'tensor' or 'channel', got {weight_granularity!r}")
    if "peg_groups" in changes and (not isinstance(peg_groups, int) or peg_groups < 1):
        raise QuantError(f"peg_groups must be a positive integer, got {peg_groups!r}")
    rec = dataclasses.replace(rec, **changes) if changes else rec
    ovr = [parse_override(o) if isinstance(o, str) else o for o in overrides]
    qm = QuantizedModel(model, rec, ovr)
    if qm.static_sites:
        if calibration is None:
            raise CalibrationError(f"recipe {recipe!r} needs calibration texts (static ranges); pass calibration=")
        texts, pairs = calibration if isinstance(calibration, tuple) else (calibration, None)
        if len(texts) == 0:
            raise CalibrationError("the calibration set is empty; pass at least one text")
        qm.calibrate([b for _, b in model.batches(texts, pairs, batch_size)], progress=progress)
    else:
        qm.calibrated = True
        qm._quantize_weights()
    return qm


# ------------------------------------------------------------------------------------ save / load

QUANT_JSON = "npbert_quant.json"
QUANT_TENSORS = "quantized.safetensors"
_COPY = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "modules.json",
         "sentence_bert_config.json", "1_Pooling")


def save_quantized(qm: QuantizedModel, out_dir: str | Path) -> Path:
    """Integer weights, weight scales, site QParams, the PEG permutation and the recipe, as safetensors +
    JSON. Written into a temporary folder and renamed into place: an interrupted save leaves nothing."""
    import shutil
    import tempfile

    from safetensors.numpy import save_file

    if not qm.calibrated:
        raise CalibrationError("calibrate the model before saving it")
    out_dir = Path(out_dir)
    if out_dir.exists() and not (out_dir / QUANT_JSON).is_file():
        raise InputError(f"{out_dir} exists and is not an npbert quantized model; choose a new folder")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}."))
    try:
        tensors = {}
        qlin = set(qm.qweights)
        for k, v in qm.params.items():
            if k.endswith(".weight") and k[: -len(".weight")] in qlin:
                continue
            tensors[k] = np.ascontiguousarray(v, np.float32)
        for n, w in qm.qweights.items():
            tensors[f"{n}.weight.q"] = np.ascontiguousarray(w.q)
            tensors[f"{n}.weight.scale"] = w.scale
        if qm.word_emb is not None:
            tensors[WORD_EMB + ".q"], tensors[WORD_EMB + ".scale"] = qm.word_emb
        if qm.perm is not None:
            tensors["peg.perm"] = qm.perm
        save_file(tensors, str(tmp / QUANT_TENSORS))
        meta = {
            "format_version": FORMAT_VERSION,
            "recipe": qm.recipe.name,
            "recipe_version": qm.recipe.version,
            "overrides": [[p, kv] for p, kv in qm.overrides],
            "site_qparams": {s: qp.to_dict() for s, qp in qm.site_qparams.items()},
            "config": qm.config.to_dict(),
        }
        (tmp / QUANT_JSON).write_text(json.dumps(meta, indent=1, default=_json_default))
        (tmp / "config.json").write_text(json.dumps(qm.config.to_dict(), indent=1))
        src = Path(qm.source)
        for name in _COPY:
            if (src / name).is_dir():
                shutil.copytree(src / name, tmp / name)
            elif (src / name).is_file():
                shutil.copy2(src / name, tmp / name)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _json_default(o):
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (np.integer, np.floating)):
        return o.item()
    if isinstance(o, tuple):
        return list(o)
    raise TypeError(type(o).__name__)


def load_quantized(model_dir: str | Path) -> QuantizedModel:
    """Load what save_quantized wrote; outputs are bit-identical to the saved model's."""
    from npbert.config import BertConfig
    from npbert.io.tokenizer import Tokenizer
    from npbert.io.weights import load_safetensors
    from npbert.model import Pooling

    model_dir = Path(model_dir)
    meta_file = model_dir / QUANT_JSON
    if not meta_file.is_file():
        raise InputError(f"{model_dir}: no {QUANT_JSON}; this is not an npbert quantized model (save one with "
                         "`npbert quantize`)")
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise QuantError(f"{meta_file}: not valid JSON ({e}); re-save the model") from None
    if meta.get("format_version") != FORMAT_VERSION:
        raise QuantError(f"{meta_file}: format version {meta.get('format_version')!r}, this npbert reads "
                         f"{FORMAT_VERSION}; re-quantize the FP32 model with this version")
    recipe = get_recipe(meta.get("recipe", "?"))
    if meta.get("recipe_version") != recipe.version:
        raise QuantError(f"{meta_file}: saved by recipe {recipe.name!r} version {meta.get('recipe_version')!r}, "
                         f"this npbert has version {recipe.version}; re-quantize the FP32 model")
    cfg = BertConfig.from_dict(meta["config"], source=str(meta_file))
    t = load_safetensors(model_dir / QUANT_TENSORS)
    params = {k: v for k, v in t.items() if not (k.endswith((".weight.q", ".weight.scale")) or k == "peg.perm")}
    word_emb = None
    if recipe.embedding_int8:
        try:
            word_emb = (np.array(t[WORD_EMB + ".q"]), np.array(t[WORD_EMB + ".scale"]))
        except KeyError:
            raise QuantError(f"{model_dir / QUANT_TENSORS}: the int8 word embeddings of recipe {recipe.name!r} are missing; re-save") from None
    want = expected_shapes(cfg, with_pooler="pooler.dense.bias" in params)
    bad = [(k, tuple(v.shape), want[k]) for k, v in params.items() if k in want and tuple(v.shape) != want[k]]
    bad += [(k + ".q", tuple(t[k + ".q"].shape), want[k]) for k in (n + ".weight" for n in linear_names(cfg))
            if k + ".q" in t and tuple(t[k + ".q"].shape) != want[k]]
    if bad:
        k, got, exp = bad[0]
        raise QuantError(f"{model_dir / QUANT_TENSORS}: tensor {k!r} has shape {got}, its config implies {exp}; re-save")
    qweights = {}
    for n in linear_names(cfg):
        try:
            q, scale = np.array(t[f"{n}.weight.q"]), np.array(t[f"{n}.weight.scale"])
        except KeyError:
            raise QuantError(f"{model_dir / QUANT_TENSORS}: integer weights of {n!r} are missing; re-save") from None
        qweights[n] = QWeight(scale, np.array(params[n + ".bias"], np.float32, copy=True), kg.pack_int8_weight(q))
    tok = Tokenizer.from_dir(model_dir, cfg.max_tokens) if (model_dir / "tokenizer.json").is_file() else None
    base = Model(cfg, params, tok, Pooling.from_dir(model_dir), str(model_dir))
    qm = QuantizedModel(base, recipe, [(p, kv) for p, kv in meta.get("overrides", [])])
    qm.site_qparams = {s: QParams.from_dict(d) for s, d in meta["site_qparams"].items()}
    unknown = set(qm.site_qparams) - set(qm.sites)
    if unknown:
        raise QuantError(f"{meta_file}: QParams for unknown sites {sorted(unknown)[:3]}; the file does not match the model")
    qm.perm = np.array(t["peg.perm"]) if "peg.perm" in t else None
    qm.qweights = qweights
    qm._fuse_qkv()
    qm.word_emb = word_emb
    qm.float_weights_released = True
    qm.calibrated = True
    return qm
