"""The quantized encoder: integer path vs its fake-quant simulation, PEG folding, save/load, bad input."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from npbert.errors import CalibrationError, InputError, QuantError
from npbert.model import load_model
from npbert.qmodel import (RECIPES, fold_permutation, get_recipe, load_quantized, quantize_model, site_errors)

from tests.conftest import GOLDEN

TINY_TEXTS = ["the cat sat on the mat", "a dog runs very fast", "the quick brown fox jumps over the lazy dog",
              "good movie", "bad film is not good", "the man plays guitar", "a woman eats food", "night and day"]
REAL_TEXTS = TINY_TEXTS + ["A man is playing a flute.", "The stock market fell sharply on Tuesday after the report.",
                           "She said the results were surprisingly good, given how little data there was."]


def nmse(a, ref, mask):
    m = mask.astype(bool)
    return float(((a - ref)[m] ** 2).sum() / (ref[m] ** 2).sum())


@pytest.fixture(scope="module")
def tiny():
    return load_model(GOLDEN / "tiny-bert")


# Integer path vs fake-quant simulation. The simulation runs every GEMM in float64 on dequantized
# values, the integer path accumulates exactly and rounds its float epilogue in float32; where a value
# lands within ~1e-7 of a rounding boundary of the next quantizer the two pick neighbouring codes, and
# that one-step difference propagates. Budget: the integer path's distance to the simulation is at most
# 5% of the simulation's own quantization noise (NMSE vs FP32); on the tiny model measured <= 1e-7
# relative. On all-MiniLM-L6-v2 the flips are rarer but can propagate: see the per-sequence test below.
SIM_BUDGET = 0.05


def _int_vs_sim(model, texts, recipe):
    qm = quantize_model(model, recipe, calibration=texts)
    b = model.tokenizer.encode(texts)
    ref = model.forward(b).last_hidden_state
    o_int = qm.forward(b).last_hidden_state
    o_sim = qm.forward(b, qm.executor(simulate=True)).last_hidden_state
    return nmse(o_int, o_sim, b.attention_mask), nmse(o_sim, ref, b.attention_mask)


# The option sets the MPNet similarity table reports (bench/run_sim_table.sh), besides the base recipes.
OPTION_VARIANTS = ["w8a8-mp:weights=channel:west=minmax:ff2bits=16", "peg:groups=4:weights=channel:west=minmax:ff2bits=16",
                   "peg:split=range", "dynamic:wbits=7:weights=channel", "w8a8-mp:wbits=7", "peg:wbits=7"]


@pytest.mark.parametrize("recipe", list(RECIPES) + OPTION_VARIANTS)
def test_integer_path_matches_simulation_tiny(tiny, recipe):
    d_int, d_q = _int_vs_sim(tiny, TINY_TEXTS, recipe)
    assert d_int <= SIM_BUDGET * d_q + 1e-12, (d_int, d_q)
    assert 0 < d_q < 0.05  # it did quantize, and not into garbage


@pytest.mark.realmodel
@pytest.mark.parametrize("recipe", list(RECIPES))
def test_integer_path_matches_simulation_minilm(minilm_dir, recipe):
    """Per sequence, since a boundary flip is a rare event local to its sequence: most sequences come out
    bit-identical (measured: 5-11 of 11, depending on the BLAS thread count that orders the
    simulation's float64 sums), and one flip can propagate into a whole sequence (up to 47% of that
    sequence's quantization noise, peg, OPENBLAS_NUM_THREADS=1). A systematic difference (a wrong scale,
    zero point or rounding) would move every sequence. So: the median sequence within SIM_BUDGET, and
    all sequences together within 3 x SIM_BUDGET (measured worst 7%)."""
    m = load_model(minilm_dir)
    qm = quantize_model(m, recipe, calibration=REAL_TEXTS)
    b = m.tokenizer.encode(REAL_TEXTS)
    ref = m.forward(b).last_hidden_state
    o_int = qm.forward(b).last_hidden_state
    o_sim = qm.forward(b, qm.executor(simulate=True)).last_hidden_state
    per_seq = [nmse(o_int[i], o_sim[i], b.attention_mask[i]) / nmse(o_sim[i], ref[i], b.attention_mask[i])
               for i in range(len(REAL_TEXTS))]
    assert np.median(per_seq) <= SIM_BUDGET, per_seq
    d_int, d_q = nmse(o_int, o_sim, b.attention_mask), nmse(o_sim, ref, b.attention_mask)
    assert d_int <= 3 * SIM_BUDGET * d_q, (d_int, d_q, per_seq)


@pytest.mark.realmodel
@pytest.mark.parametrize("recipe", ["dynamic", "tm-iqr", "dynamic:weights=channel"])
def test_fused_qkv_is_bit_identical_and_shares_the_weight_bytes(minilm_dir, recipe, monkeypatch, tmp_path):
    """all-MiniLM-L6-v2 (C = 384: whole panels) runs query, key and value as one GEMM over the stacked
    weight: outputs equal the three linears' bit for bit, two GEMMs a layer fewer ran, and the stack
    holds the bytes the three QWeights read (the model stays one byte per weight). A saved and
    reloaded model stacks them again."""
    from npbert.kernels import gemm as kg
    from npbert.qmodel import QuantExecutor

    m = load_model(minilm_dir)
    qm = quantize_model(m, recipe)
    L = m.config.num_hidden_layers
    assert len(qm.qkv_weights) == L
    for prefix, w in qm.qkv_weights.items():
        parts = [qm.qweights[f"{prefix}.{n}"] for n in ("query", "key", "value")]
        assert all(np.shares_memory(p.packed.panels, w.packed.panels) for p in parts)
        assert all(np.shares_memory(p.scale, w.scale) and np.shares_memory(p.bias, w.bias) for p in parts)
        assert sum(p.packed.panels.nbytes for p in parts) == w.packed.panels.nbytes
    b = m.tokenizer.encode(REAL_TEXTS[:3])
    monkeypatch.setattr(QuantExecutor, "LAYER_CORE", False)  # GEMMs counted at their Python entries (the
    # compiled layer calls the same kernels: test_fused_layer_is_bit_identical)
    layer_gemms = ["gemm_s8s8", "gemm_u8s8", "dequant_into"]  # (quad-panel float outputs, checked or not: dequant_into)
    calls = _count_calls(monkeypatch, kg, *layer_gemms)
    runs = _fused_layer_runs(monkeypatch)  # (not on pair panels: 8-bit per-channel weights where pairs are
    # split, AVX2; on VNNI every weight packs as quads)
    out = qm.forward(b).last_hidden_state.copy()
    quads = all(w.packed.layout == "quads" for w in qm.qweights.values())
    assert quads == (recipe != "dynamic:weights=channel" or not kg.SPLIT_PAIRS)
    assert runs == (["one by one:stacked"] * L if quads else [])
    fused_calls = len(calls)
    monkeypatch.setattr(QuantExecutor, "FUSE_QKV", False)
    np.testing.assert_array_equal(qm.forward(b).last_hidden_state, out)
    assert len(calls) - 2 * fused_calls == 2 * L  # unfused: two more linears a layer
    if recipe == "dynamic":
        re = load_quantized(qm.save(tmp_path / "q"))
        assert len(re.qkv_weights) == L
        monkeypatch.setattr(QuantExecutor, "FUSE_QKV", True)
        np.testing.assert_array_equal(re.forward(b).last_hidden_state, out)


@pytest.fixture(scope="module")
def tiny32(tiny):
    """tiny-bert widened to C = 32 (4 heads), random weights of the same scale per tensor: whole
    16-column panels, so query, key and value stack (the golden C = 30 does not)."""
    from npbert.config import BertConfig
    from npbert.model import Model

    rng = np.random.default_rng(32)
    d = tiny.config.to_dict()
    d.update(hidden_size=32, num_attention_heads=4)
    params = {k: (rng.standard_normal(tuple(32 if n == 30 else n for n in v.shape)) * v.std() + v.mean()).astype(np.float32)
              for k, v in tiny.params.items()}
    return Model(BertConfig.from_dict(d), params, tiny.tokenizer, tiny.pooling, "tiny32")


@pytest.mark.parametrize("recipe,overrides", [
    ("dynamic", ()), ("tm-iqr", ()), ("dynamic:wbits=7", ()), ("dynamic:weights=channel", ()),
    ("dynamic", ("*LayerNorm.out=bits:16",)),  # int16 input codes: the stack's pair repack
    ("dynamic", ("*.attention.self.*.out=off",)),  # float attention on the column views
    ("w8a8", ("*.attention.self.*.out=mode:dynamic",)),  # static per-tensor input codes
    ("peg", ("*.attention.self.*.out=mode:dynamic",)),  # PEG's grouped input codes (gemm_grouped)
])
def test_fused_qkv_every_input_kind_is_bit_identical(tiny32, recipe, overrides, monkeypatch):
    """The stacked q/k/v GEMM against the three linears, for each kind of input codes and of q/k/v
    consumer it can meet: outputs equal bit for bit, and the stack ran (two linears a layer fewer)."""
    from npbert.kernels import gemm as kg
    from npbert.qmodel import QuantExecutor

    monkeypatch.setattr(QuantExecutor, "LAYER_CORE", False)  # GEMMs counted at their Python entries
    qm = quantize_model(tiny32, recipe, calibration=TINY_TEXTS, overrides=list(overrides))
    L = tiny32.config.num_hidden_layers
    assert len(qm.qkv_weights) == L
    b = tiny32.tokenizer.encode(TINY_TEXTS)
    calls = _count_calls(monkeypatch, kg, "gemm_s8s8", "gemm_u8s8", "gemm_s16s8", "dequant_into", "gemm_grouped")
    out = qm.forward(b).last_hidden_state.copy()
    fused_calls = len(calls)
    for switch, value in (("FUSE_QKV_HEADS", False), ("FUSE_QKV_MAX_ROWS", 0), ("FUSE_QKV", False)):
        monkeypatch.setattr(QuantExecutor, switch, value)  # heads one by one; then too many rows; then off
        n0 = len(calls)
        np.testing.assert_array_equal(qm.forward(b).last_hidden_state, out)
        assert len(calls) - n0 == fused_calls + (0 if switch == "FUSE_QKV_HEADS" else 2 * L)


@pytest.mark.parametrize("recipe,overrides,fused", [  # (7-bit weights: tiny32's random 8-bit ones pack as pairs)
    ("dynamic:wbits=7", (), True), ("tm-iqr:wbits=7", (), True), ("dynamic:wbits=7:emb=int8", (), True),
    ("dynamic:wbits=7:tmiqr=all", (), True),
    ("dynamic:wbits=7", ("encoder.layer.1.*.query.out=bits:7",), "not layer 1"),  # q, k, v specs differ there
    ("dynamic:wbits=7:ff2bits=16", (), False),  # int16 FF2 codes
    ("dynamic:wbits=7", ("*.attention.self.*.out=off",), False),  # float attention
    ("dynamic", (), False),  # weights on pair panels (packed as on AVX2, below)
    ("w8a8:wbits=7", (), False),  # static sites
    ("dynamic", (), "vnni"),  # 8-bit weights on quad panels without fixes (VNNI's packing)
])
@pytest.mark.parametrize("core", [True, False])
def test_fused_layer_is_bit_identical(tiny32, recipe, overrides, fused, core, monkeypatch):
    """QuantExecutor.layer runs a plain dynamic layer as one compiled call (LAYER_CORE) or as the same
    kernels called one by one: on padded batches the outputs equal the hooks' (FUSE_LAYERS off) bit
    for bit, for the stacked q/k/v and, past FUSE_QKV_MAX_ROWS or with FUSE_QKV off, for three q/k/v
    GEMMs; it ran for exactly the layers it covers (q/k/v specs that differ only keep it off the
    stacked layout)."""
    from npbert.kernels import gemm as kg
    from npbert.qmodel import QuantExecutor

    if fused == "vnni":
        if kg.SPLIT_PAIRS:
            pytest.skip("this CPU packs 8-bit weights with fixes (no VNNI): the cases above cover it")
        fused = True
    else:  # pack as on AVX2 (fixes; uniform 8-bit codes on pairs) whatever the host
        monkeypatch.setattr(kg, "SPLIT_PAIRS", True)
    monkeypatch.setattr(QuantExecutor, "LAYER_CORE", core)
    qm = quantize_model(tiny32, recipe, calibration=TINY_TEXTS, overrides=list(overrides))
    L = tiny32.config.num_hidden_layers
    b = tiny32.tokenizer.encode(TINY_TEXTS)
    assert not b.attention_mask.all()  # padding: the segments and the key mask matter
    runs = _fused_layer_runs(monkeypatch)
    path = "core:" if core else "one by one:"
    out = qm.forward(b).last_hidden_state.copy()
    assert runs == [path + "stacked"] * {True: L, False: 0, "not layer 1": L - 1}[fused]
    for switch, value in (("FUSE_QKV_MAX_ROWS", b.input_ids.size - 1), ("FUSE_QKV", False), ("FUSE_LAYERS", False)):
        with monkeypatch.context() as mp:  # one switch at a time: the last compares with the hooks
            mp.setattr(QuantExecutor, switch, value)
            runs.clear()
            np.testing.assert_array_equal(qm.forward(b).last_hidden_state, out)
            layers = 0 if (switch == "FUSE_LAYERS" or fused is False) else L  # three q/k/v GEMMs: every layer
            assert runs == [path + "three"] * layers


def _fused_layer_runs(monkeypatch) -> list:
    """A list that gets an entry for every layer QuantExecutor.layer ran itself: "core:stacked" /
    "core:three" (the q/k/v GEMMs' layout) where the compiled call (kernels.layer.dynamic_layer_into)
    returned OK, "core:step N" where it stopped at step N's non-finite values (then the layer input it
    was given must be unchanged: checked here, since the hooks run again from it), "one by one:stacked"
    / "one by one:three" where layer() called the kernels itself."""
    from npbert.kernels import layer as kl
    from npbert.qmodel import QuantExecutor

    runs = []
    core = kl.dynamic_layer_into

    def watched_core(*a):
        x2 = a[0].copy()
        code = core(*a)
        if code == kl.OK:
            runs.append("core:" + ("stacked" if a[5] else "three"))
        else:
            np.testing.assert_array_equal(a[0], x2)  # (NaN == NaN here: assert_array_equal's rule)
            runs.append(f"core:step {code}")
        return code

    monkeypatch.setattr(kl, "dynamic_layer_into", watched_core)
    linear_rows, one_head_block = QuantExecutor._linear_rows, QuantExecutor._one_head_block
    three = []

    def watched_linear_rows(self, plan, j, *a):
        if j == 2:  # the layer's last linear: it ran to its end
            runs.append("one by one:" + ("three" if three else "stacked"))
            three.clear()
        return linear_rows(self, plan, j, *a)

    monkeypatch.setattr(QuantExecutor, "_linear_rows", watched_linear_rows)
    monkeypatch.setattr(QuantExecutor, "_one_head_block", lambda self, *a: three.append(1) or one_head_block(self, *a))
    return runs


def test_fused_layer_with_mpnet_relative_bias_is_bit_identical(monkeypatch):
    """MPNet's attention bias is a full [B, h, T, T] relative bias plus the key mask (softmax's rel
    path), and its positions count from pad + 1: a random 2-layer MPNet with whole panels (C = 32) runs
    fused and equals its hooks bit for bit on a padded batch."""
    from npbert.config import BertConfig
    from npbert.io.tokenizer import Batch
    from npbert.model import Model, Pooling, expected_shapes
    from npbert.qmodel import QuantExecutor

    cfg = BertConfig.from_dict(dict(model_type="mpnet", architectures=["MPNetModel"], vocab_size=50, hidden_size=32,
                                    num_hidden_layers=2, num_attention_heads=4, intermediate_size=40,
                                    max_position_embeddings=40, pad_token_id=1, relative_attention_num_buckets=32))
    rng = np.random.default_rng(40)
    params = {k: (rng.standard_normal(shape) * (1.0 if k.endswith("LayerNorm.weight") else 0.3)).astype(np.float32)
              for k, shape in expected_shapes(cfg, with_pooler=False).items()}
    qm = quantize_model(Model(cfg, params, None, Pooling(), "mpnet32"), "dynamic:wbits=7")
    ids = np.full((3, 11), 1, np.int64)
    mask = np.zeros_like(ids)
    for i, n in enumerate((11, 6, 2)):
        ids[i, :n], mask[i, :n] = rng.choice(np.r_[0, 2:50], n), 1
    b = Batch(ids, mask, np.zeros_like(ids), np.zeros(3, bool))
    runs = _fused_layer_runs(monkeypatch)
    out = qm.forward(b).last_hidden_state.copy()
    assert runs == ["core:stacked"] * cfg.num_hidden_layers
    monkeypatch.setattr(QuantExecutor, "LAYER_CORE", False)  # the kernels one by one
    np.testing.assert_array_equal(qm.forward(b).last_hidden_state, out)
    monkeypatch.setattr(QuantExecutor, "FUSE_LAYERS", False)  # the hooks
    np.testing.assert_array_equal(qm.forward(b).last_hidden_state, out)
    assert runs == ["core:stacked"] * cfg.num_hidden_layers + ["one by one:stacked"] * cfg.num_hidden_layers


@pytest.mark.parametrize("path", ["core", "one by one", "hooks"])
@pytest.mark.parametrize("ln,fused_layers", [("output", 1), ("attention.output", 0)])
def test_nonfinite_activations_raise_naming_the_row(tiny32, path, ln, fused_layers, monkeypatch):
    """A NaN inside the encoder (a LayerNorm weight of layer 0, here) stops the integer forward with
    InputError naming the first bad row, whichever way the layer runs: the compiled layer (which hands a
    NaN to the hooks to name), its kernels one by one, or the hooks. The layer's output LayerNorm
    poisons layer 1's input (layer 0 ran fused), its attention LayerNorm the FF1 input inside layer 0."""
    from npbert.model import Model
    from npbert.qmodel import QuantExecutor

    monkeypatch.setattr(QuantExecutor, "FUSE_LAYERS", path != "hooks")
    monkeypatch.setattr(QuantExecutor, "LAYER_CORE", path == "core")
    params = dict(tiny32.params)
    gamma = params[f"encoder.layer.0.{ln}.LayerNorm.weight"].copy()
    gamma[3] = np.nan
    params[f"encoder.layer.0.{ln}.LayerNorm.weight"] = gamma
    qm = quantize_model(Model(tiny32.config, params, tiny32.tokenizer, tiny32.pooling, "nan"), "dynamic:wbits=7")
    runs = _fused_layer_runs(monkeypatch)
    with pytest.raises(InputError, match="quantize_dynamic: NaN in row 0; the activations are not finite"):
        qm.forward(tiny32.tokenizer.encode(TINY_TEXTS[:2]))
    expected = {"hooks": [], "one by one": ["one by one:stacked"] * fused_layers,
                "core": ["core:stacked"] * fused_layers + [f"core:step {1 if fused_layers else 4}"]}[path]
    assert runs == expected  # (the core stops at layer 1's input, or at layer 0's FF1 input: steps 1 / 4)


def test_fold_permutation_keeps_fp32_outputs(tiny):
    from npbert.quant.peg import inverse_permutation

    b = tiny.tokenizer.encode(TINY_TEXTS)
    ref = tiny.forward(b)
    perm = np.random.default_rng(0).permutation(tiny.config.hidden_size)
    folded = load_model(GOLDEN / "tiny-bert")
    folded.params = fold_permutation(tiny.params, tiny.config, perm)
    out = folded.forward(b)
    # Permutation changes only the order of LayerNorm's C-term sums: float32 rounding, ~C * eps.
    FOLD_ATOL = 1e-5
    m = b.attention_mask.astype(bool)
    np.testing.assert_allclose(out.last_hidden_state[..., inverse_permutation(perm)][m], ref.last_hidden_state[m],
                               atol=FOLD_ATOL, rtol=0)
    np.testing.assert_allclose(out.logits, ref.logits, atol=FOLD_ATOL, rtol=0)


def test_peg_one_group_no_permutation_equals_w8a8_exactly(tiny):
    # Same estimator at the FFN sites in both, so the ranges agree; then every code must agree.
    minmax = [f"{p}=estimator:minmax" for p in ("*.attention.output.LayerNorm.out", "*.output.dense.out", "*.output.residual")]
    w8a8 = quantize_model(tiny, "w8a8", calibration=TINY_TEXTS, overrides=minmax)
    peg1 = quantize_model(tiny, "peg", calibration=TINY_TEXTS, peg_groups=1, peg_permute=False)
    assert peg1.site_qparams["encoder.layer.0.output.residual"].granularity == "group"
    b = tiny.tokenizer.encode(TINY_TEXTS)
    a, c = w8a8.forward(b), peg1.forward(b)
    assert np.array_equal(a.last_hidden_state, c.last_hidden_state)
    assert np.array_equal(a.logits, c.logits)


def test_peg_permutation_is_folded_and_undone(tiny):
    qm = quantize_model(tiny, "peg", calibration=TINY_TEXTS, peg_groups=3)
    assert qm.perm is not None and sorted(qm.perm) == list(range(tiny.config.hidden_size))
    b = tiny.tokenizer.encode(TINY_TEXTS)
    ref = tiny.forward(b).last_hidden_state
    assert nmse(qm.forward(b).last_hidden_state, ref, b.attention_mask) < 0.05  # returned in HF's order


def test_save_load_bit_identical(tiny, tmp_path):
    for recipe in [*RECIPES, "dynamic:emb=int8", "peg:emb=int8", "peg:split=range", "dynamic:wbits=7"]:
        qm = quantize_model(tiny, recipe, calibration=TINY_TEXTS)
        out = qm.save(tmp_path / recipe)
        re = load_quantized(out)
        # the reloaded model is as lean as the saved one: int8 panels only, no float copies rebuilt
        assert not [k for k in re.params if k.endswith(".weight") and k[:-7] in re.qweights], recipe
        assert ("embeddings.word_embeddings.weight" in re.params) == (re.word_emb is None), recipe
        b = tiny.tokenizer.encode(TINY_TEXTS[:3])
        a, c = qm.forward(b), re.forward(b)
        assert np.array_equal(a.last_hidden_state, c.last_hidden_state), recipe
        assert np.array_equal(a.logits, c.logits), recipe


def test_sixteen_bit_residuals_lower_residual_error(task_models_dir):
    m = load_model(task_models_dir / "MRPC")
    texts = REAL_TEXTS * 2
    batches = [b for _, b in m.batches(REAL_TEXTS, REAL_TEXTS[::-1], 16)]
    e8 = site_errors(quantize_model(m, "w8a8", calibration=(texts, texts[::-1])), m, batches)
    e16 = site_errors(quantize_model(m, "w8a8-mp", calibration=(texts, texts[::-1])), m, batches)
    residual = [s for s in e8 if s.endswith("output.residual") and ".attention." not in s]
    assert len(residual) == m.config.num_hidden_layers
    for s in residual:
        assert e16[s]["nmse"] < e8[s]["nmse"], (s, e16[s], e8[s])


# ------------------------------------------------------------------------------------- bad input


def test_unknown_recipe(tiny):
    with pytest.raises(QuantError, match="unknown recipe 'int4'; valid: dynamic"):
        quantize_model(tiny, "int4")


def test_unknown_site_pattern(tiny):
    with pytest.raises(QuantError, match="matches no site"):
        quantize_model(tiny, "dynamic", overrides=["encoder.layer.9.nothing=off"])


@pytest.mark.parametrize("bits", [1, 17, 0])
def test_bits_out_of_range(tiny, bits):
    with pytest.raises(QuantError, match="bits must be in 2..16"):
        quantize_model(tiny, "dynamic", overrides=[f"*.output.dense.in=bits:{bits}"])


def test_bad_override_syntax(tiny):
    with pytest.raises(QuantError, match="PATTERN=off"):
        quantize_model(tiny, "dynamic", overrides=["no-equals-sign"])
    with pytest.raises(QuantError, match="unknown key 'colour'"):
        quantize_model(tiny, "dynamic", overrides=["*=colour:red"])


def test_weight_estimator_option(tiny):
    """west= picks the weight range estimator: minmax keeps every weight inside the grid (no clipping),
    mse may clip; a bad value names the valid ones."""
    assert get_recipe("w8a8").weight_estimator == "mse"
    r = get_recipe("w8a8:west=minmax:weights=channel")
    assert (r.weight_estimator, r.weight_granularity, r.name) == ("minmax", "channel", "w8a8:west=minmax:weights=channel")
    assert get_recipe("dynamic:west=mse").weight_estimator == "mse"
    with pytest.raises(QuantError, match="bad option 'west=median'.*west=minmax\\|mse\\|percentile"):
        get_recipe("peg:west=median")
    q_mse = quantize_model(tiny, "w8a8", calibration=TINY_TEXTS)
    q_mm = quantize_model(tiny, "w8a8:west=minmax", calibration=TINY_TEXTS)
    for n, w in q_mm.qweights.items():  # min-max: the largest |w| maps to code +-127, nothing clipped
        W = tiny.params[n + ".weight"]
        np.testing.assert_allclose(w.scale, np.abs(W).max() / 127, rtol=1e-6, err_msg=n)
        assert np.abs(w.q.astype(np.int32)).max() == 127
    assert any(not np.array_equal(q_mm.qweights[n].q, q_mse.qweights[n].q) for n in q_mm.qweights)
    b = tiny.tokenizer.encode(TINY_TEXTS)
    assert not np.array_equal(q_mm.forward(b).last_hidden_state, q_mse.forward(b).last_hidden_state)


def test_ff2bits_option(tiny):
    """ff2bits=16 puts the FF2 input (GELU output) at 16 bits, symmetric, and nothing else."""
    r, base = get_recipe("w8a8:ff2bits=16"), get_recipe("w8a8")
    ff2, other = "encoder.layer.0.output.dense.in", "encoder.layer.0.attention.output.dense.in"
    assert (r.spec(ff2).bits, r.spec(ff2).symmetric, r.spec(ff2).mode) == (16, True, "static")
    assert r.spec(other) == base.spec(other)
    d = get_recipe("dynamic:ff2bits=16").spec(ff2)
    assert (d.mode, d.bits) == ("dynamic", 16)
    with pytest.raises(QuantError, match="bad option 'ff2bits=12'.*ff2bits=16"):
        get_recipe("w8a8:ff2bits=12")
    q8 = quantize_model(tiny, "w8a8", calibration=TINY_TEXTS)
    q16 = quantize_model(tiny, "w8a8:ff2bits=16", calibration=TINY_TEXTS)
    assert q16.site_qparams[ff2].int_dtype == np.int16
    assert q16.site_qparams[other] == q8.site_qparams[other]
    b = [tiny.tokenizer.encode(TINY_TEXTS)]
    e8, e16 = site_errors(q8, tiny, b)[ff2]["nmse"], site_errors(q16, tiny, b)[ff2]["nmse"]
    assert e16 < e8, (e16, e8)  # same upstream sites; only the FF2 input grid is finer


def test_empty_calibration(tiny):
    with pytest.raises(CalibrationError, match="empty"):
        quantize_model(tiny, "w8a8", calibration=[])
    with pytest.raises(CalibrationError, match="needs calibration"):
        quantize_model(tiny, "w8a8", calibration=None)


def test_calibration_shorter_than_groups(tiny):
    with pytest.raises(CalibrationError, match="PEG with 6 groups needs at least 6 calibration sequences"):
        quantize_model(tiny, "peg", calibration=TINY_TEXTS[:2])


def test_load_other_recipe_version(tiny, tmp_path):
    out = quantize_model(tiny, "dynamic").save(tmp_path / "q")
    meta = json.loads((out / "npbert_quant.json").read_text())
    meta["recipe_version"] = 999
    (out / "npbert_quant.json").write_text(json.dumps(meta))
    with pytest.raises(QuantError, match="version 999, this npbert has version 1; re-quantize"):
        load_quantized(out)
    meta["recipe_version"], meta["format_version"] = 1, 0
    (out / "npbert_quant.json").write_text(json.dumps(meta))
    with pytest.raises(QuantError, match="format version 0"):
        load_quantized(out)


@pytest.mark.parametrize("fuse_layers", [True, False])
def test_context_gemm_refuses_16_bit_probabilities(tiny32, fuse_layers, monkeypatch):
    """The integer P V takes 8-bit probability codes; 16-bit ones get a QuantError that says so, from
    the fused layer and the hooks alike (their float simulation runs)."""
    from npbert.qmodel import QuantExecutor

    monkeypatch.setattr(QuantExecutor, "FUSE_LAYERS", fuse_layers)
    qm = quantize_model(tiny32, "dynamic:wbits=7", overrides=["*.probs=bits:16"])
    b = tiny32.tokenizer.encode(TINY_TEXTS[:2])
    with pytest.raises(QuantError, match="8-bit probability codes .* got uint16 codes"):
        qm.forward(b)
    assert np.isfinite(qm.forward(b, qm.executor(simulate=True)).last_hidden_state).all()


def test_load_refuses_tensors_of_another_shape(tiny, tmp_path):
    """A saved model whose integer weights, scales or float tensors disagree with its config is refused
    at load (the GEMMs' unchecked entries would otherwise read and write by the config's sizes)."""
    from safetensors.numpy import load_file, save_file

    out = quantize_model(tiny, "dynamic").save(tmp_path / "q")
    tensors = load_file(out / "quantized.safetensors")
    w = "encoder.layer.1.intermediate.dense.weight"
    for key, bad, match in ((w + ".q", tensors[w + ".q"][:, :-1], "has shape"),
                            (w + ".scale", tensors[w + ".scale"][:-1], "scale of shape"),
                            ("encoder.layer.0.output.LayerNorm.weight", np.ones(3, np.float32), "has shape")):
        save_file({**tensors, key: np.ascontiguousarray(bad)}, out / "quantized.safetensors")
        with pytest.raises(QuantError, match=match):
            load_quantized(out)


def test_save_refuses_foreign_folder(tiny, tmp_path):
    d = tmp_path / "not-ours"
    shutil.copytree(GOLDEN / "tiny-bert", d)
    with pytest.raises(Exception, match="not an npbert quantized model"):
        quantize_model(tiny, "dynamic").save(d)
    assert (d / "model.safetensors").is_file()  # nothing lost


def test_residual_stream_sites_are_exactly_the_permuted_ones(tiny):
    """After folding a permutation, residual-stream sites hold permuted values and all others the
    same values: that is what site_errors relies on to compare PEG models with FP32."""
    from npbert.model import Model
    from npbert.qmodel import _FP32Tap, in_residual_stream
    from npbert.quant.peg import inverse_permutation

    perm = np.random.default_rng(1).permutation(tiny.config.hidden_size)
    b = tiny.tokenizer.encode(TINY_TEXTS)
    folded = Model(tiny.config, fold_permutation(tiny.params, tiny.config, perm), tiny.tokenizer, tiny.pooling)
    ref, got = _FP32Tap(tiny.params, tiny.config), _FP32Tap(folded.params, tiny.config)
    tiny.forward(b, ref)
    folded.forward(b, got)
    assert ref.seen.keys() == got.seen.keys()
    inv = inverse_permutation(perm)
    for s, x in ref.seen.items():
        y = got.seen[s][..., inv] if in_residual_stream(s) else got.seen[s]
        np.testing.assert_allclose(y, x, atol=1e-5, err_msg=s)


def test_quantized_model_keeps_one_byte_per_linear_weight(tiny):
    """The int8 panels are the only copy of a linear weight: no FP32 weight stays in params, so a
    second calibration (which runs the FP32 model) is refused with a message that says what to do."""
    qm = quantize_model(tiny, "w8a8", calibration=TINY_TEXTS)
    for n, w in qm.qweights.items():
        assert n + ".weight" not in qm.params and n + ".bias" in qm.params
        assert w.packed.panels.dtype == np.int8
        assert w.packed.panels.size < w.q.size + 32 * w.packed.kp  # padding to 16 columns at most
    assert "embeddings.word_embeddings.weight" in qm.params  # float unless emb=int8
    with pytest.raises(CalibrationError, match="quantize_model"):
        qm.calibrate([tiny.tokenizer.encode(TINY_TEXTS)])


def test_int8_embedding_rows(tiny):
    """emb=int8: per-row symmetric codes, each row's error at most half its step; the float table is gone."""
    qm = quantize_model(tiny, "dynamic:emb=int8")
    assert "embeddings.word_embeddings.weight" not in qm.params
    q, scale = qm.word_emb
    table = tiny.params["embeddings.word_embeddings.weight"]
    assert q.dtype == np.int8 and q.shape == table.shape and scale.shape == (table.shape[0],)
    err = np.abs(q.astype(np.float32) * scale[:, None] - table)
    assert np.all(err <= scale[:, None] / 2 * (1 + 1e-6))
    live = np.abs(table).max(axis=1) > 0  # the padding row is all zeros: codes 0
    assert np.all(np.abs(q[live]).max(axis=1) == 127) and not q[~live].any()  # abs-max per row: full grid
    b = tiny.tokenizer.encode(TINY_TEXTS)
    assert not np.array_equal(qm.forward(b).last_hidden_state, quantize_model(tiny, "dynamic").forward(b).last_hidden_state)
    with pytest.raises(QuantError, match="emb=int8\\|float"):
        get_recipe("dynamic:emb=int4")


@pytest.mark.parametrize("recipe", ["dynamic", "w8a8-mp"])
def test_int8_embeddings_cost_little_on_minilm(minilm_dir, recipe):
    """On all-MiniLM-L6-v2 the int8 table adds little to the recipe's own error: NMSE vs FP32 grows by
    at most 10% (measured: dynamic 0.112 -> 0.118, w8a8-mp 0.0254 -> 0.0253)."""
    m = load_model(minilm_dir)
    b = m.tokenizer.encode(REAL_TEXTS)
    ref = m.forward(b).last_hidden_state
    y = quantize_model(m, recipe, calibration=REAL_TEXTS).forward(b).last_hidden_state
    y8 = quantize_model(m, recipe + ":emb=int8", calibration=REAL_TEXTS).forward(b).last_hidden_state
    assert nmse(y8, ref, b.attention_mask) <= 1.1 * nmse(y, ref, b.attention_mask)


# roles QuantExecutor.buffer must hand out (a forward that silently allocated everything fresh would
# still be correct, only slower: this pins that the buffers are in use)
_DYNAMIC_ROLES = {"out:attention.self.query", "codes:attention.self.query.out", "codes:attention.self.probs",
                  "ctx:attention.self", ":attention.output.residual", ":attention.output.LayerNorm.out",
                  ":output.LayerNorm.out", "codes:output.LayerNorm.out"}
_STATIC_ROLES = {"codes:attention.self.probs", "ctx:attention.self", "acc"}


@pytest.mark.parametrize("model_name,recipe", [("tiny-bert", "dynamic"), ("tiny-bert", "tm-iqr"), ("tiny-bert", "w8a8"),
                                               ("tiny-bert", "peg"), ("tiny-bert-token", "dynamic"),
                                               ("tiny-roberta-bf16", "dynamic")])
def test_reused_buffers_never_leak_into_results(model_name, recipe, monkeypatch):
    """Encoder values (GEMM outputs and accumulators, dynamic codes, probabilities, attention contexts,
    LayerNorm outputs) live in buffers reused across layers and forwards: a returned result must not
    change when the model runs again (on other inputs, of another shape), a rerun must reproduce it bit
    for bit, and it must equal, bit for bit, a forward that allocates every value fresh."""
    from npbert.qmodel import QuantExecutor
    model = load_model(GOLDEN / model_name)
    qm = quantize_model(model, recipe, calibration=TINY_TEXTS)
    b1, b2 = model.tokenizer.encode(TINY_TEXTS[:3]), model.tokenizer.encode(TINY_TEXTS[3:])
    o1 = qm.forward(b1)
    h1, l1 = o1.last_hidden_state.copy(), None if o1.logits is None else o1.logits.copy()
    roles = {k[0] for k in qm._scratch_local.bufs}
    assert (_DYNAMIC_ROLES if recipe in ("dynamic", "tm-iqr") else _STATIC_ROLES) <= roles, roles
    qm.forward(b2)
    assert np.array_equal(o1.last_hidden_state, h1)
    if l1 is not None:
        assert np.array_equal(o1.logits, l1)
    assert np.array_equal(qm.forward(b1).last_hidden_state, h1)
    qm.release_scratch()
    assert not qm._scratch_local.bufs
    assert np.array_equal(qm.forward(b1).last_hidden_state, h1)
    monkeypatch.setattr(QuantExecutor, "REUSE_OUTPUTS", False)
    o3 = qm.forward(b1)
    assert np.array_equal(o3.last_hidden_state, h1)
    if l1 is not None:
        assert np.array_equal(o3.logits, l1)


def test_peg_range_split(tiny):
    """split=range: K groups sized by the DP over the range-sorted dims (not C/K each), shared by every
    PEG site; it needs the permutation."""
    from npbert.quant.peg import range_optimal_bounds

    qm = quantize_model(tiny, "peg:split=range", calibration=TINY_TEXTS)
    bounds = {tuple(qm.site_qparams[s].group_bounds) for s in qm.group_sites}
    assert len(bounds) == 1
    (b,) = bounds
    C = tiny.config.hidden_size
    assert b[0] == 0 and b[-1] == C and len(b) == 7 and b != tuple(np.linspace(0, C, 7).astype(int))
    with pytest.raises(QuantError, match="needs permute=1"):
        get_recipe("peg:split=range:permute=0")
    with pytest.raises(QuantError, match="bad option 'split=median'"):
        get_recipe("peg:split=median")
    assert range_optimal_bounds(np.array([1.0, 1.0, 1.0, 50.0]), 2).tolist() == [0, 3, 4]


def _count_calls(monkeypatch, module, *names) -> list:
    """Wrap module.name (each of names) so every call appends to the returned list."""
    calls = []
    for fn in names:
        kernel = getattr(module, fn)
        monkeypatch.setattr(module, fn, lambda *a, _k=kernel, **kw: calls.append(1) or _k(*a, **kw))
    return calls


@pytest.mark.parametrize("recipe", ["w8a8", "w8a8-mp", "peg", "peg:split=range", "w8a8:ff2bits=16", "peg:ff2bits=16"])
def test_fused_linear_output_quantizer_is_bit_identical(tiny, recipe, monkeypatch):
    """Linear outputs quantized in the GEMM's epilogue pass change no bit of the output."""
    from npbert.kernels import fused
    from npbert.qmodel import QuantExecutor

    qm = quantize_model(tiny, recipe, calibration=TINY_TEXTS)
    b = tiny.tokenizer.encode(TINY_TEXTS)
    calls = _count_calls(monkeypatch, fused, "epilogue_quantize", "activation_quantize")
    fused_out = qm.forward(b).last_hidden_state.copy()
    assert len(calls) == 6 * tiny.config.num_hidden_layers  # q, k, v, attention output, FF1, FF2 of every layer
    monkeypatch.setattr(QuantExecutor, "FUSE_LINEAR_QUANT", False)
    np.testing.assert_array_equal(qm.forward(b).last_hidden_state, fused_out)


@pytest.mark.parametrize("recipe", ["w8a8", "w8a8-mp", "peg", "peg:split=range", "w8a8:ff2bits=16", "peg:ff2bits=16"])
def test_fused_residual_layer_norm_is_bit_identical(tiny, recipe, monkeypatch):
    """The one-kernel residual block (integer add -> LayerNorm -> codes) changes no bit of the output."""
    from npbert.qmodel import QuantExecutor

    from npbert.kernels import fused

    qm = quantize_model(tiny, recipe, calibration=TINY_TEXTS)
    b = tiny.tokenizer.encode(TINY_TEXTS)
    calls = _count_calls(monkeypatch, fused, "residual_layer_norm_quantize")
    fused_out = qm.forward(b).last_hidden_state.copy()
    assert len(calls) == 2 * tiny.config.num_hidden_layers  # both residual blocks of every layer took it
    monkeypatch.setattr(QuantExecutor, "FUSE_RESIDUAL_LN", False)
    np.testing.assert_array_equal(qm.forward(b).last_hidden_state, fused_out)


def test_seven_bit_weights_pick_the_quad_kernel(tiny):
    """wbits=7: every weight code on [-63, 63]; where the CPU has AVX2 they are packed as quads, so
    8-bit activations run the uint8 x int7 kernel (16-bit ones use a cached pair repack)."""
    from npbert.kernels._simd import HAVE_U8S7

    qm = quantize_model(tiny, "dynamic:wbits=7:weights=channel", calibration=TINY_TEXTS)
    for w in qm.qweights.values():
        q = w.q
        assert -63 <= q.min() and q.max() <= 63 and np.abs(q).max() == 63  # the 7-bit grid, used to its ends
        assert w.packed.layout == ("quads" if HAVE_U8S7 else "pairs")
    from npbert.kernels import gemm as kg

    # tiny's random 8-bit codes need many fixes: pairs where pairs are split (AVX2), quads on VNNI
    want = "pairs" if (kg.SPLIT_PAIRS or not HAVE_U8S7) else "quads"
    assert {w.packed.layout for w in quantize_model(tiny, "dynamic").qweights.values()} == {want}
    with pytest.raises(QuantError, match="bad option 'wbits=6'"):
        get_recipe("dynamic:wbits=6")


def test_prepared_kernel_arguments_are_keyed_by_identity():
    """Per-model cache of kernel arguments derived from fixed grids: objects count by identity (an
    equal but distinct QParams / array is rebuilt for), ints and strings by value."""
    from npbert.qmodel import _prepared
    cache, calls = {}, []

    def build():
        calls.append(1)
        return len(calls)

    a, b = np.zeros(2), np.zeros(2)
    assert _prepared(cache, ("grid", a, 384), build) == 1
    assert _prepared(cache, ("grid", a, int("384")), build) == 1  # an equal int, another object
    assert _prepared(cache, ("grid", b, 384), build) == 2  # an equal array, another object
    assert _prepared(cache, ("grid", a, 385), build) == 3


@pytest.mark.parametrize("recipe", ["dynamic", "tm-iqr", "dynamic:weights=channel", "dynamic:wbits=7", "w8a8-mp"])
def test_gemm_dequant_and_unsigned_codes_are_bit_identical(tiny, recipe, monkeypatch):
    """The linears' float outputs from the GEMM's registers (gemm_dequant, on quad panels) and the
    dynamic input codes in their unsigned form change no bit against the int8 codes, the int32 result
    and the separate epilogue; gemm_dequant runs for every quad-panel linear that outputs floats."""
    from npbert.kernels import gemm as kg
    from npbert.qmodel import QuantExecutor

    monkeypatch.setattr(QuantExecutor, "LAYER_CORE", False)  # GEMMs counted at their Python entries
    qm = quantize_model(tiny, recipe, calibration=TINY_TEXTS)
    b = tiny.tokenizer.encode(TINY_TEXTS)
    calls = _count_calls(monkeypatch, kg, "dequant_into")  # (gemm_dequant's quad-panel call, checked or not)
    out = qm.forward(b).last_hidden_state.copy()
    quads = sum(w.packed.layout == "quads" for w in qm.qweights.values())
    if recipe != "w8a8-mp":  # (w8a8-mp's linears write codes, not floats: linear_site)
        assert len(calls) == quads
    from npbert.kernels._simd import HAVE_U8S7

    if recipe == "dynamic:wbits=7" and HAVE_U8S7:  # 7-bit weights always pack as quads: the path is taken
        assert quads == len(qm.qweights) > 0
    for switch in ("DYN_UNSIGNED_CODES", "FUSE_GEMM_DEQUANT"):
        monkeypatch.setattr(QuantExecutor, switch, False)
        np.testing.assert_array_equal(qm.forward(b).last_hidden_state, out)
