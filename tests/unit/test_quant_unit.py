"""Worked examples and error paths of npbert.quant (the properties live in tests/properties)."""

import json

import numpy as np
import pytest

from npbert.errors import CalibrationError, InputError, QuantError
from npbert.quant import (ESTIMATORS, QUANTIZERS, QParams, dequantize, fake_quant, get_quantizer, grid_limits,
                          make_estimator, peg_qparams, qparams_from_range, quantize, tmiqr_clip_ref,
                          tmiqr_qparams_ref, tmiqr_threshold_ref, token_absmax)
from npbert.quant.tmiqr import quantile_type7

F32 = np.float32


# --- QParams -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("bits,signed,lim,dtype", [
    (2, True, (-1, 1), np.int8), (8, True, (-127, 127), np.int8), (8, False, (0, 255), np.uint8),
    (9, True, (-255, 255), np.int16), (16, True, (-32767, 32767), np.int16), (16, False, (0, 65535), np.uint16),
])
def test_grid_and_storage(bits, signed, lim, dtype):
    qp = QParams(F32(1.0), np.int32(0), bits, signed)
    assert (qp.qmin, qp.qmax) == lim == grid_limits(bits, signed)
    assert qp.int_dtype == dtype
    assert np.iinfo(dtype).min <= lim[0] and lim[1] <= np.iinfo(dtype).max


@pytest.mark.parametrize("kw,match", [
    (dict(scale=F32(0.0)), "finite and > 0"),
    (dict(scale=F32(-1.0)), "finite and > 0"),
    (dict(scale=F32(np.inf)), "finite and > 0"),
    (dict(scale=F32(np.nan)), "finite and > 0"),
    (dict(scale=np.float32(1e-40)), "normal float32"),
    (dict(zero_point=np.int32(256)), "zero_point must lie in"),
    (dict(zero_point=np.int32(-1)), "zero_point must lie in"),
    (dict(scale=np.ones(3, F32)), "zero_point shape"),
    (dict(scale=np.ones(3, F32), zero_point=np.zeros(3, np.int32)), "integer axis"),
    (dict(axis=0), "per-tensor"),
    (dict(scale=np.ones(2, F32), zero_point=np.zeros(2, np.int32), axis=0, perm=[1, 0]), "perm is only"),
    (dict(scale=np.ones(2, F32), zero_point=np.zeros(2, np.int32), axis=0, group_bounds=[0, 2, 2]),
     "strictly increase"),
    (dict(scale=np.ones(2, F32), zero_point=np.zeros(2, np.int32), axis=0, group_bounds=[0, 1]), r"\[G\+1\]"),
    (dict(scale=np.ones(2, F32), zero_point=np.zeros(2, np.int32), axis=0, group_bounds=[0, 1, 3],
          perm=[0, 1, 1]), "permutation"),
    (dict(scale=F32(3e38)), "overflow float32"),
    (dict(bits=17), "bits must be in 2..16"),
    (dict(bits=8.0), "bits must be in 2..16"),
])
def test_qparams_validation(kw, match):
    args = dict(scale=F32(1.0), zero_point=np.int32(0), bits=8, signed=False) | kw
    with pytest.raises(QuantError, match=match):
        QParams(**args)


def test_qparams_frozen_and_read_only():
    qp = QParams(np.ones(2, F32), np.zeros(2, np.int32), 8, True, axis=1)
    with pytest.raises(Exception):
        qp.bits = 4
    with pytest.raises(ValueError):
        qp.scale[0] = 2.0
    assert qp == QParams(np.ones(2), [0, 0], 8, True, axis=1) and len({qp, qp}) == 1


def test_to_dict_is_json_and_exact():
    qp = peg_qparams(np.array([-1.0, -0.1, -7.3, 0.0]), np.array([1.0, 0.3, 9.1, 0.2]), 2, 8, False,
                     permute=True)
    d = json.loads(json.dumps(qp.to_dict()))
    back = QParams.from_dict(d)
    assert back == qp and back.perm.dtype == np.int64 and back.scale.tobytes() == qp.scale.tobytes()
    with pytest.raises(QuantError, match="malformed"):
        QParams.from_dict({"scale": 1.0})


# --- qparams_from_range ------------------------------------------------------------------------------

def test_symmetric_signed_example():
    qp = qparams_from_range(-1.0, 0.5, 8, symmetric=True)
    assert qp.signed and qp.scale == F32(1 / 127) and qp.zero_point == 0
    assert quantize(F32(-1.0), qp) == -127 and quantize(F32(-5.0), qp) == -127   # narrow grid: no -128


def test_symmetric_nonnegative_uses_unsigned_grid():
    qp = qparams_from_range(0.0, 2.0, 8, symmetric=True)
    assert not qp.signed and qp.scale == F32(2 / 255) and qp.zero_point == 0
    assert qparams_from_range(0.0, 2.0, 8, symmetric=True, signed=True).signed
    with pytest.raises(QuantError, match="signed=False"):
        qparams_from_range(-1.0, 2.0, 8, symmetric=True, signed=False)


def test_asymmetric_example():
    qp = qparams_from_range(-1.0, 3.0, 8, symmetric=False)
    assert qp.scale == F32(4 / 255) and qp.zero_point == 64          # rint(63.75)
    qp2 = qparams_from_range(2.0, 5.0, 8, symmetric=False)          # widened to include 0
    assert qp2.zero_point == 0 and qp2.scale == F32(5 / 255)
    with pytest.raises(QuantError, match="unsigned grid"):
        qparams_from_range(-1.0, 3.0, 8, symmetric=False, signed=True)


def test_zero_width_range_scale_one_and_bad_ranges():
    for sym in (True, False):
        qp = qparams_from_range(0.0, 0.0, 8, sym)
        assert qp.scale == 1.0 and fake_quant(np.zeros(4, F32), qp).tolist() == [0.0] * 4
    with pytest.raises(QuantError, match="lo must be <= hi"):
        qparams_from_range(1.0, -1.0, 8, True)
    with pytest.raises(QuantError, match="finite"):
        qparams_from_range(np.nan, 1.0, 8, True)


def test_tiny_range_floors_scale_at_normal_float32():
    qp = qparams_from_range(0.0, 1e-43, 8, True)
    assert qp.scale == np.finfo(F32).tiny


def test_per_channel_arrays():
    qp = qparams_from_range(np.array([-1.0, -2.0]), np.array([1.0, 4.0]), 8, False, axis=-1)
    assert qp.scale.shape == qp.zero_point.shape == (2,) and qp.granularity == "channel"


def test_quantizers_registry():
    assert set(QUANTIZERS) == {"symmetric", "asymmetric"}
    assert get_quantizer("symmetric")(-1.0, 1.0, 8) == qparams_from_range(-1.0, 1.0, 8, True)
    with pytest.raises(QuantError, match="valid"):
        get_quantizer("nf4")


# --- quantize / dequantize ---------------------------------------------------------------------------

def test_round_half_to_even():
    qp = QParams(F32(1.0), np.int32(0), 8, True)
    x = np.array([0.5, 1.5, 2.5, -0.5, -1.5, -2.5], F32)
    assert quantize(x, qp).tolist() == [0, 2, 2, 0, -2, -2]


def test_per_token_is_per_channel_on_token_axis():
    x = np.array([[1.0, -2.0, 0.5], [10.0, 20.0, -30.0]], F32)          # [T=2, H=3]
    absmax = np.abs(x).max(axis=1)
    qp = qparams_from_range(-absmax, absmax, 8, True, axis=0)
    q = quantize(x, qp)
    assert q[0, 1] == -127 and q[1, 2] == -127 and q[1, 1] == round(20 / 30 * 127)


def test_bad_inputs():
    qp = qparams_from_range(-1.0, 1.0, 8, True)
    with pytest.raises(InputError, match="non-finite"):
        quantize(np.array([0.0, np.nan], F32), qp)
    with pytest.raises(InputError, match="non-finite"):
        quantize(np.array([1e300]), qp)                                   # beyond float32
    with pytest.raises(InputError, match="integer codes"):
        dequantize(np.array([1.0]), qp)
    with pytest.raises(InputError, match="outside the grid"):
        dequantize(np.array([-128], np.int16), qp)
    qc = qparams_from_range(np.zeros(3), np.ones(3), 8, True, axis=1)
    with pytest.raises(InputError, match="channels"):
        quantize(np.zeros((3, 4), F32), qc)
    with pytest.raises(InputError, match="out of range"):
        quantize(np.zeros(3, F32), qc)


def test_sixteen_bit_unsigned_full_grid():
    qp = qparams_from_range(0.0, 65535.0, 16, False)
    q = quantize(np.array([0.0, 65535.0, 1e9], F32), qp)
    assert q.dtype == np.uint16 and q.tolist() == [0, 65535, 65535]
    assert dequantize(q, qp).tolist() == [0.0, 65535.0, 65535.0]


# --- estimators --------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_estimator_no_data_and_reset(name):
    e = make_estimator(name)
    with pytest.raises(CalibrationError, match="no data: call update"):
        e.range()
    e.update(np.ones((2, 3), F32), mask=np.zeros(2, bool))               # all masked: still no data
    with pytest.raises(CalibrationError):
        e.range()
    e.update(np.arange(6, dtype=F32).reshape(2, 3))
    lo, hi = e.range()
    assert lo.shape == hi.shape == () and lo.dtype == np.float32 and lo <= hi
    e.reset()
    with pytest.raises(CalibrationError):
        e.range()


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_estimator_per_channel_shapes_and_qparams(name):
    rng = np.random.default_rng(0)
    e = make_estimator(name, axis=-1, bits=8, symmetric=True)
    x = rng.normal(size=(2, 5, 4)).astype(F32)
    e.update(x, mask=np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]))
    lo, hi = e.range()
    assert lo.shape == hi.shape == (4,)
    qp = e.qparams()
    assert qp.granularity == "channel" and qp.axis == -1 and qp.signed
    with pytest.raises(InputError, match="channels"):
        e.update(np.zeros((3, 5), F32))


def test_estimator_input_errors():
    e = make_estimator("minmax", axis=1)
    with pytest.raises(InputError, match="channel axis"):
        e.update(np.zeros((2, 3, 4), F32), mask=np.ones((2, 3), bool))
    e = make_estimator("minmax")
    with pytest.raises(InputError, match="does not match"):
        e.update(np.zeros((2, 3, 4), F32), mask=np.ones((3, 2), bool))
    with pytest.raises(InputError, match="bool or 0/1"):
        e.update(np.zeros((2, 3), F32), mask=np.full((2, 3), 0.5))
    with pytest.raises(InputError, match="non-finite"):
        e.update(np.array([1.0, np.inf], F32))
    with pytest.raises(QuantError, match="bad options"):
        make_estimator("minmax", momentum=0.9)
    with pytest.raises(QuantError, match="momentum"):
        make_estimator("running_minmax", momentum=1.0)
    with pytest.raises(QuantError, match="p must be"):
        make_estimator("percentile", p=20)


def test_reservoir_bounded_and_deterministic():
    rng = np.random.default_rng(1)
    batches = [rng.normal(size=(300, 4)).astype(F32) for _ in range(5)]
    runs = []
    for _ in range(2):
        e = make_estimator("percentile", axis=-1, p=99.0, max_samples=400)   # 100 rows of 4 channels
        for b in batches:
            e.update(b)
        assert e._res.data.shape == (100, 4) and e._res.n_seen == 1500
        runs.append(e.range())
    assert all(np.array_equal(a, b) for a, b in zip(*runs))
    allv = np.concatenate(batches)                                   # the sample came from every batch
    assert np.all(np.isin(e._res.data[:, 0], allv[:, 0]))
    assert len(np.unique(np.searchsorted(np.cumsum([300] * 5), np.nonzero(
        np.isin(allv[:, 0], e._res.data[:, 0]))[0], side="right"))) == 5


def test_mse_clips_an_outlier_and_percentile_100_is_minmax():
    rng = np.random.default_rng(2)
    x = np.concatenate([rng.normal(size=4000), [60.0]]).astype(F32)
    mse = make_estimator("mse", bits=4, symmetric=True)
    mse.update(x)
    lo, hi = mse.range()
    # clipped; the symmetric grid is +-hi, the returned lo stays inside the data's min-max
    assert hi < 0.5 * 60.0 and lo == max(x.min(), -hi)
    asym = make_estimator("mse", bits=4, symmetric=False, n_grid=40, n_offsets=5)
    asym.update(x)
    assert asym.range()[1] < 30.0
    p = make_estimator("percentile", p=100.0)
    p.update(x)
    assert p.range() == (x.min(), x.max())


def test_running_minmax_first_batch_initialises():
    e = make_estimator("running_minmax")
    e.update(np.array([-3.0, 5.0], F32))
    assert e.range() == (-3.0, 5.0)


# --- TM-IQR ------------------------------------------------------------------------------------------

def test_tmiqr_worked_example():
    # 8 tokens, token maxima 1..7 and one outlier of 100 (H = 2, the max sits in column 1)
    m = np.array([1, 2, 3, 4, 5, 6, 7, 100], F32)
    x = np.stack([np.zeros(8, F32), -m], axis=1)                     # [8, 2]
    assert token_absmax(x).tolist() == m.tolist()
    # type 7: h1 = 1.75 -> Q1 = 2.75; h3 = 5.25 -> Q3 = 6.25; t = 6.25 + 1.5 * 3.5 = 11.5
    assert tmiqr_threshold_ref(m) == F32(11.5)
    xc = tmiqr_clip_ref(x)
    assert xc[:, 1].tolist() == [-1, -2, -3, -4, -5, -6, -7, -11.5]
    qp = tmiqr_qparams_ref(x, bits=8)
    assert qp.scale == F32(11.5 / 127)


def test_tmiqr_threshold_capped_at_absmax():
    x = np.array([[1.0, 0.0], [-2.0, 0.5], [0.0, 3.0]], F32)         # Q1 1.5, Q3 2.5: t = 4 > 3
    assert tmiqr_threshold_ref(token_absmax(x)) == 4.0
    assert np.array_equal(tmiqr_clip_ref(x), x)


def test_tmiqr_bad_input():
    for bad in (np.zeros((0, 4), F32), np.zeros(4, F32), np.zeros((2, 2, 2), F32)):
        with pytest.raises(InputError, match=r"\[L, H\]"):
            tmiqr_clip_ref(bad)
    with pytest.raises(InputError, match="non-finite"):
        token_absmax(np.array([[np.nan]], F32))


def test_quantile_type7_small_cases():
    assert quantile_type7([5.0], 0.25) == 5.0
    assert quantile_type7([0.0, 4.0], 0.25) == 1.0 and quantile_type7([0.0, 4.0], 0.75) == 3.0


# --- PEG ---------------------------------------------------------------------------------------------

def test_peg_outlier_dims_go_to_last_group():
    lo = -np.ones(8)
    hi = np.ones(8)
    lo[[2, 5]], hi[[2, 5]] = -50.0, 80.0                             # two outlier dims
    qp = peg_qparams(lo, hi, 4, 8, symmetric=False, permute=True)
    assert set(qp.perm[-2:].tolist()) == {2, 5}
    s, _ = qp.per_channel()
    assert s[2] == s[5] == qp.scale[-1] and np.all(s[[0, 1, 3, 4, 6, 7]] == qp.scale[0])
    assert qp.scale[0] == F32(2 / 255)
    x = np.tile(np.array([0.9, -0.9, 70.0, 0.1, 0.2, -45.0, 0.0, 1.0], F32), (3, 1))
    err = np.abs(fake_quant(x, qp) - x)
    assert err[:, [0, 1, 3, 4, 6, 7]].max() <= qp.scale[0] / 2 + 1e-7     # fine groups stay fine


def test_peg_too_few_dims():
    with pytest.raises(QuantError, match="groups need at least"):
        peg_qparams(np.zeros(3), np.ones(3), 4, 8, True, permute=False)
    with pytest.raises(QuantError, match="per-dim ranges"):
        peg_qparams(np.float32(0.0), np.float32(1.0), 1, 8, True, permute=False)


def test_stale_jit_cache_is_dropped_when_any_source_changes(tmp_path):
    """numba keys cached code on each function's own file only; npbert drops the whole package cache
    when any source changes (a kernel inlined from another file would otherwise stay stale)."""
    from npbert._jit import drop_stale_cache
    pkg = tmp_path / "pkg"
    (pkg / "sub" / "__pycache__").mkdir(parents=True)
    (pkg / "a.py").write_text("x = 1\n")
    (pkg / "sub" / "b.py").write_text("y = 2\n")
    cached = pkg / "sub" / "__pycache__" / "b.f-1.py311.nbi"
    cached.write_text("")
    assert drop_stale_cache(pkg) and not cached.exists()  # no stamp yet: dropped, stamp written
    cached.write_text("")
    assert not drop_stale_cache(pkg) and cached.exists()  # unchanged sources: kept
    (pkg / "a.py").write_text("x = 3\n")  # another file than the cached function's
    assert drop_stale_cache(pkg) and not cached.exists()
