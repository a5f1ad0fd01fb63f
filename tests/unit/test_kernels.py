"""Unit tests of npbert/kernels: every fast kernel against its naive twin in kernels/reference.py.

Tolerances: integer results compare EXACTLY (np.array_equal, same dtype); float outputs that the
twin computes with the same IEEE operations in the same order compare bit for bit (array_equal).
The only inequality bounds (dequantization error) are derived in the test that uses them.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from npbert.errors import InputError, QuantError
from npbert.kernels import gemm as G
from npbert.kernels import reference as R
from npbert.kernels._simd import (HAVE_U8S7, MR, NR, microkernel_finish, microkernel_ir, microkernel_numba, microkernel_quads,
                                  microkernel_scaled, microkernel_u8s7, microkernel_u8s7_numba)
from npbert.kernels.gemm import (
    bgemm_s8s8,
    bgemm_u8s8,
    gemm_grouped,
    gemm_s8s8,
    gemm_s16s8,
    gemm_u8s8,
    pack_int8_weight,
)
from npbert.kernels.fused import activation
from npbert.kernels.quantize import (add_requant, quantize_dynamic, quantize_dynamic_rows, quantize_static, quantize_static_grouped,
                                     requantize)
from npbert.kernels.selection import quantile_linear, select_kth, tmiqr_threshold

ODD = (1, 3, 7, 17, 33, 127, 129)
# a spread of odd shapes: all of ODD on each axis, mixed with each other (not the full 7^3 product)
SHAPES = sorted(
    {(m, n, k) for m, n, k in zip(ODD, ODD[::-1], ODD[3:] + ODD[:3])}
    | {(m, n, k) for m, n, k in zip(ODD, ODD, ODD)}
    | {(1, 1, 1), (2, 16, 2), (4, 16, 64), (5, 31, 130), (129, 1, 7), (1, 129, 33), (64, 48, 510), (9, 17, 1023)}
)


def _rng(seed=0):
    return np.random.default_rng(seed)


def _i8(rng, shape):
    return rng.integers(-128, 128, shape).astype(np.int8)


def _u8(rng, shape):
    return rng.integers(0, 256, shape).astype(np.uint8)


def _eq(x, y):
    assert x.dtype == y.dtype, (x.dtype, y.dtype)
    assert x.shape == y.shape, (x.shape, y.shape)
    assert np.array_equal(x, y)


# -------------------------------------------------------------------------------------- micro-kernel


@pytest.mark.parametrize("npairs", [0, 1, 2, 5, 64, 255])
def test_microkernel_ir_equals_numba_twin(npairs):
    rng = _rng(npairs)
    lda = 2 * npairs + 6
    a = rng.integers(-32768, 32768, 3 + MR * lda + 8).astype(np.int16)
    w = rng.integers(-128, 128, 32 + 2 * NR * npairs + 8).astype(np.int16)
    # into a [4, 16] tile buffer, and into rows of a wider result (offset 5, row stride 37)
    for o_off, ldo, size in ((0, NR, MR * NR), (5, 37, 5 + 3 * 37 + NR + 4)):
        t1 = np.full(size, 7, np.int32)
        t2 = np.full(size, 7, np.int32)
        microkernel_ir(a, 3, lda, w, 32, npairs, t1, o_off, ldo)
        microkernel_numba(a, 3, lda, w, 32, npairs, t2, o_off, ldo)
        _eq(t1, t2)
        written = np.zeros(size, bool)
        for r in range(MR):
            written[o_off + r * ldo : o_off + r * ldo + NR] = True
        assert np.all(t1[~written] == 7)  # nothing outside the tile is touched


@pytest.mark.parametrize("npairs", [0, 1, 32, 97])
def test_scaled_and_finishing_microkernels_equal_the_twin_then_numpy(npairs):
    """The grouped GEMM's two variants: the float64 accumulate and the float32 finish must equal the
    int32 tile of the twin followed by the same float operations in NumPy, bit for bit."""
    rng = _rng(100 + npairs)
    lda = 2 * npairs + 6
    a = rng.integers(-255, 256, 3 + MR * lda + 8).astype(np.int16)
    w = rng.integers(-128, 128, 32 + 2 * NR * npairs + 8).astype(np.int8)
    tile = np.empty(MR * NR, np.int32)
    microkernel_numba(a, 3, lda, w.astype(np.int16), 32, npairs, tile, 0, NR)
    y0 = rng.standard_normal(MR * NR)
    s = float(np.float32(3e-3))
    yt = y0.copy()
    microkernel_scaled(a, 3, lda, w, 32, npairs, yt, s)
    want = y0 + s * tile.astype(np.float64)
    assert np.array_equal(yt, want)
    ws = rng.uniform(0.5, 2, NR).astype(np.float32)
    bs = np.full(NR, -0.0, np.float32)
    bs[::2] = rng.standard_normal(NR // 2)
    ldd, d_off = 21, 4
    dst = np.full(d_off + 3 * ldd + NR + 3, 7, np.float32)
    microkernel_finish(a, 3, lda, w, 32, npairs, y0.copy(), s, ws, bs, dst, d_off, ldd)
    fin = (want.astype(np.float32).reshape(MR, NR) * ws + bs)
    for r in range(MR):
        assert np.array_equal(dst[d_off + r * ldd : d_off + r * ldd + NR].view(np.int32), fin[r].view(np.int32))
    written = np.zeros(dst.size, bool)
    for r in range(MR):
        written[d_off + r * ldd : d_off + r * ldd + NR] = True
    assert np.all(dst[~written] == 7)


needs_u8s7 = pytest.mark.skipif(not HAVE_U8S7, reason="the quad (vpmaddubsw) kernel needs an AVX2 CPU")


def _i7(rng, shape):
    return rng.integers(-64, 64, shape).astype(np.int8)


@needs_u8s7
@pytest.mark.parametrize("nquads", [0, 1, 5, 96])
def test_microkernel_u8s7_equals_numba_twin(nquads):
    rng = _rng(200 + nquads)
    lda = 4 * nquads + 8
    a = _u8(rng, 5 + MR * lda + 8)
    w = _i7(rng, 16 + 64 * nquads + 8)
    corr = rng.integers(-1000, 1000, 40).astype(np.int32)
    o1, o2 = np.full(80, 7, np.int32), np.full(80, 7, np.int32)
    microkernel_u8s7(a, 5, lda, w, 16, nquads, corr, 3, o1, 2, 17)
    microkernel_u8s7_numba(a, 5, lda, w, 16, nquads, corr, 3, o2, 2, 17)
    _eq(o1, o2)


@needs_u8s7
@pytest.mark.parametrize("nfix", [0, 1, 7, 40])
def test_microkernel_quads_fixes_equal_twin(nfix):
    """The fixes added in the registers: the twin without fixes plus a8[r, k] * v in column c, for
    fixes anywhere in the tile (repeated columns and ks, both halves, the extreme values)."""
    rng = _rng(300 + nfix)
    nq, lda = 9, 4 * 9 + 4
    a = _u8(rng, 3 + MR * lda)
    a[3 : 3 + 4] = 255
    w = _i7(rng, 8 + 64 * nq)
    corr = rng.integers(-1000, 1000, 20).astype(np.int32)
    fc = rng.integers(0, NR, nfix + 2).astype(np.int64)
    fk = rng.integers(0, 4 * nq, nfix + 2).astype(np.int64)
    fv = rng.integers(-128, 128, nfix + 2).astype(np.int64)
    if nfix:
        fc[1], fk[1], fv[1] = 15, 0, -128
    o1, o2 = np.full(70, 7, np.int32), np.full(70, 7, np.int32)
    microkernel_quads(a, 3, lda, w, 8, nq, corr, 2, fc, fk, fv, 1, 1 + nfix, o1, 1, 17)  # entries 1..nfix only
    microkernel_u8s7_numba(a, 3, lda, w, 8, nq, corr, 2, o2, 1, 17)
    for e in range(1, 1 + nfix):
        for r in range(MR):
            o2[1 + r * 17 + fc[e]] += np.int32(a[3 + r * lda + fk[e]]) * np.int32(fv[e])
    _eq(o1, o2)


@needs_u8s7
@pytest.mark.parametrize("wv", [-64, 63])
def test_microkernel_u8s7_extreme_pairs_do_not_saturate(wv):
    """vpmaddubsw saturates int16 pair sums; at the 7-bit extremes a pair is 2 * 255 * 64 = 32640 < 2^15."""
    nq = 64
    a = np.full(MR * 4 * nq, 255, np.uint8)
    w = np.full(64 * nq, wv, np.int8)
    o = np.empty(MR * NR, np.int32)
    microkernel_u8s7(a, 0, 4 * nq, w, 0, nq, np.zeros(NR, np.int32), 0, o, 0, NR)
    assert np.all(o == 255 * wv * 4 * nq)


@needs_u8s7
@pytest.mark.parametrize("m,n,k", SHAPES)
def test_gemm_quads_exact(m, n, k):
    """7-bit weights are packed in quad panels (auto) and run the u8 x s7 kernel: exact, as the twins."""
    rng = _rng(m * 7 + n * 13 + k)
    w = _i7(rng, (n, k))
    pw = pack_int8_weight(w)
    assert pw.layout == "quads" and np.array_equal(pw.w, w)
    a8, au = _i8(rng, (m, k)), _u8(rng, (m, k))
    _eq(gemm_s8s8(a8, pw), R.gemm_s8s8_ref(a8, w))
    for zp in (0, 77, 255):
        _eq(gemm_u8s8(au, zp, pw), R.gemm_u8s8_ref(au, zp, w))
    # the extremes of both operands at once
    amax = np.full((m, k), 255, np.uint8)
    wmin = np.full((n, k), -64, np.int8)
    _eq(gemm_u8s8(amax, 0, wmin), R.gemm_u8s8_ref(amax, 0, wmin))
    a16 = rng.integers(-3000, 3000, (m, k)).astype(np.int16)
    _eq(gemm_s16s8(a16, pw, 11), R.gemm_s16s8_ref(a16, w, 11))  # falls back to pair panels


@needs_u8s7
def test_gemm_quads_long_k():
    """7-bit weights keep int32 exact up to K = 131588 (255 * 64 per term), past K_MAX_U8S8."""
    K = 70000
    w = np.full((1, K), -64, np.int8)
    a = np.full((1, K), -128, np.int8)
    assert pack_int8_weight(w).layout == "quads"
    _eq(gemm_s8s8(a, w), R.gemm_s8s8_ref(a, w))


def test_generic_numba_target_keeps_the_portable_kernel():
    """NUMBA_CPU_NAME=generic (portable caches): no AVX2 intrinsics, 7-bit weights pack as pairs, quad
    panels are refused, and the grouped GEMM (no fma either) matches the reference bit for bit."""
    import subprocess
    import sys

    code = ("from npbert.kernels._simd import HAVE_U8S7; from npbert.kernels.gemm import pack_int8_weight; "
            "from npbert.errors import QuantError; import numpy as np; "
            "print(HAVE_U8S7, pack_int8_weight(np.zeros((2, 3), np.int8)).layout)\n"
            "try:\n    pack_int8_weight(np.zeros((2, 3), np.int8), 'quads')\nexcept QuantError as e:\n    print('refused')\n"
            # the grouped tiles without FMA hardware: multiply then add, the same bits as the reference
            "from npbert.kernels._simd import HAVE_FMA; from npbert.kernels.gemm import gemm_grouped; "
            "from npbert.kernels.reference import gemm_grouped_ref; r = np.random.default_rng(0); "
            "a = r.integers(0, 256, (5, 40)).astype(np.uint8); w = r.integers(-128, 128, (7, 40)).astype(np.int8); "
            "b = np.array([0, 9, 40]); z = np.array([3, 200]); s = np.array([1 / 3, 0.7], np.float32); "
            "print(HAVE_FMA, np.array_equal(gemm_grouped(a, b, z, s, w).view(np.int32), gemm_grouped_ref(a, b, z, s, w).view(np.int32)))")
    env = {**__import__("os").environ, "NUMBA_CPU_NAME": "generic"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "pairs", "refused", "False", "True"]


# Each quad-loop instruction set (_simd.QUAD_ISA) as numba compiles it for a pinned target, run where
# the host can execute it: every path must give the exact sums (the panels' fixes included) through
# the plain, dequantizing and grouped quad GEMMs. The host picks one; the others would go untested.
_QUAD_TARGETS = {
    "avx2": ("haswell", "+avx2,+fma"),
    "vnni256": ("alderlake", "+avx2,+fma,+avxvnni"),
    "vnni512": ("znver4", "+avx2,+fma,+avx512f,+avx512bw,+avx512vl,+avx512vnni"),
}
_QUAD_CHECK = """
import numpy as np
from npbert.kernels._simd import QUAD_ISA
from npbert.kernels import gemm as G, reference as R
rng = np.random.default_rng(7)
x = rng.standard_normal((45, 203)); x[:, 5:9] *= 30  # large same-sign pairs: fixes in most panels
w = np.round(x / np.abs(x).max() * 127).astype(np.int8)
G.SPLIT_PAIRS = True  # fixes in the panels on every ISA (an identity; VNNI packs without them by default)
packs = [G.pack_int8_weight(w, "quads")]
ok = [packs[0].layout == "quads", packs[0].fixes[3].size > 0]
if QUAD_ISA != "avx2":
    G.SPLIT_PAIRS = False
    packs.append(G.pack_int8_weight(w))
    ok += [packs[1].layout == "quads", packs[1].fixes[3].size == 0]
for pw in packs:
    for m in (1, 4, 13, 29):  # (vnni512: 8 x 32 tiles, a 4 x 32 one, edge rows)
        a = rng.integers(0, 256, (m, 203)).astype(np.uint8)
        ok.append(np.array_equal(G.gemm_u8s8(a, 131, pw), R.gemm_u8s8_ref(a, 131, w)))
        rs, ws, b = rng.random(m).astype(np.float32), rng.random(45).astype(np.float32), rng.random(45).astype(np.float32)
        acc = R.gemm_u8s8_ref(a, 128, w)
        want = (acc.astype(np.float64) * rs[:, None].astype(np.float64)).astype(np.float32) * ws + b
        ok.append(np.array_equal(G.gemm_dequant(a, 128, pw, rs, ws, b).view(np.int32), want.view(np.int32)))
        bounds, zps, sc = np.array([0, 64, 128, 203]), np.array([3, 128, 250]), np.array([0.5, 1 / 3, 2.0], np.float32)
        ok.append(np.array_equal(G.gemm_grouped(a, bounds, zps, sc, pw).view(np.int32),
                                 R.gemm_grouped_ref(a, bounds, zps, sc, w).view(np.int32)))
# the attention GEMMs (quad panels packed per call on VNNI, int16 pairs elsewhere), full-range codes
for B, M, N, K in ((3, 5, 7, 9), (2, 128, 32, 128), (4, 12, 16, 32)):
    a = rng.integers(-128, 128, (B, M, K)).astype(np.int8)
    u = rng.integers(0, 256, (B, M, K)).astype(np.uint8)
    b = rng.integers(-128, 128, (B, N, K)).astype(np.int8)
    ref = np.einsum("bmk,bnk->bmn", a.astype(np.int64), b.astype(np.int64)).astype(np.int32)
    refu = np.einsum("bmk,bnk->bmn", u.astype(np.int64) - 37, b.astype(np.int64)).astype(np.int32)
    ok.append(np.array_equal(G.bgemm_s8s8(a, b), ref))
    ok.append(np.array_equal(G.bgemm_u8s8(u, 37, np.ascontiguousarray(b.transpose(0, 2, 1)), b_kn=True), refu))
print(QUAD_ISA, all(ok), ok)
"""


def _host_has(*features: str) -> bool:
    from llvmlite import binding

    host = binding.get_host_cpu_features()
    return all(host.get(f, False) for f in features)


@pytest.mark.parametrize("isa", list(_QUAD_TARGETS))
def test_each_quad_instruction_set_is_exact(isa):
    import os
    import subprocess
    import sys

    cpu, feats = _QUAD_TARGETS[isa]
    if not _host_has(*(f[1:] for f in feats.split(","))):
        pytest.skip(f"this CPU cannot run {isa} code ({feats})")
    env = {**os.environ, "NUMBA_CPU_NAME": cpu, "NUMBA_CPU_FEATURES": feats}
    out = subprocess.run([sys.executable, "-c", _QUAD_CHECK], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    got_isa, all_ok, detail = out.stdout.split(maxsplit=2)
    assert got_isa == isa and all_ok == "True", out.stdout


def test_aligned_buffers_start_on_a_cache_line():
    """Weight panels and scratch start on 64-byte lines: a panel quad is one zmm load (measured 10-18%
    slower 16 bytes off a line, bench/ab_align.py)."""
    for n, dt in ((1, np.int8), (1000, np.float32), (3, np.int64)):
        a = G.aligned_empty(n, dt)
        assert a.shape == (n,) and a.dtype == dt and a.ctypes.data % G.CACHE_LINE == 0
    assert G.aligned_empty(0, np.uint8).shape == (0,)  # nothing to align, but a valid empty array
    w = _i8(_rng(3), (33, 70))
    assert pack_int8_weight(w).panels.ctypes.data % G.CACHE_LINE == 0
    parts = [np.arange(5, dtype=np.int16), np.arange(3, dtype=np.int16)]
    c = G.aligned_concat(parts)
    assert c.ctypes.data % G.CACHE_LINE == 0 and np.array_equal(c, np.concatenate(parts))
    x = np.arange(12, dtype=np.float32).reshape(3, 4)[:, ::2]
    y = G.aligned_copy(x)
    assert y.ctypes.data % G.CACHE_LINE == 0 and y.flags.c_contiguous and np.array_equal(x, y)


@pytest.fixture
def split_pairs(monkeypatch):
    """Pack as on AVX2 (saturating pairs split off into fixes) whatever the host: the fix path and the
    auto layout's fix budget stay tested on VNNI hosts, whose default packs without fixes."""
    monkeypatch.setattr(G, "SPLIT_PAIRS", True)


@pytest.mark.skipif(G.SPLIT_PAIRS or not HAVE_U8S7, reason="VNNI hosts pack without fixes; this one splits pairs")
def test_vnni_packs_every_weight_as_quads_without_fixes():
    """On VNNI no pair saturates: 'auto' packs uniform 8-bit codes (1 in 8 weights would need a fix on
    AVX2) as quads with no fixes, and the GEMMs stay exact at the operand extremes."""
    rng = _rng(6)
    w = _i8(rng, (40, 77))
    w[:, :8] = -128
    pw = pack_int8_weight(w)
    assert pw.layout == "quads" and pw.fixes[3].size == 0 and np.array_equal(pw.w, w)
    a = _i8(rng, (9, 77))
    a[:, :8] = 127
    _eq(gemm_s8s8(a, pw), R.gemm_s8s8_ref(a, w))
    u = _u8(rng, (9, 77))
    u[:, :8] = 255
    _eq(gemm_u8s8(u, 3, pw), R.gemm_u8s8_ref(u, 3, w))


def test_pack_layouts(split_pairs):
    rng = _rng(5)
    w8, w7 = _i8(rng, (20, 30)), _i7(rng, (20, 30))
    assert pack_int8_weight(w8).layout == "pairs"  # uniform int8: a quarter of the pairs, 1 in 8 weights, need a fix
    assert pack_int8_weight(w7, "pairs").layout == "pairs"
    with pytest.raises(QuantError, match="layout must be"):
        pack_int8_weight(w7, "triples")
    if HAVE_U8S7:
        pq = pack_int8_weight(w7)
        assert pq.layout == "quads" and pq.panels.nbytes == 32 * 32  # 2 panels x 8 quads x 64 bytes
        assert pq.pairs().layout == "pairs" and np.array_equal(pq.pairs().w, w7)


def _gaussian_codes(rng, shape):
    """Per-tensor symmetric codes of a Gaussian weight (max |w| -> 127): a BERT weight's few large pairs."""
    x = rng.standard_normal(shape)
    return np.round(x / np.abs(x).max() * 127).astype(np.int8)


def test_split_saturating_pairs():
    """safe + fixes = w, no safe pair can saturate (positive and negative parts each sum to <= 128),
    one fix per offending pair and none elsewhere; the extremes -128 / 127 and an odd K included."""
    rng = _rng(11)
    w = _i8(rng, (40, 57))
    w[0, :4] = [-128, -128, 127, 127]
    w[1, :4] = [-128, 127, 64, 64]  # opposite signs, and 64 + 64 = 128: both fine
    safe, fn, fk, fv = G.split_saturating_pairs(w)
    back = safe.astype(np.int64)
    np.add.at(back, (fn, fk), fv)
    assert np.array_equal(back, w)
    pairs = np.pad(safe.astype(np.int64), ((0, 0), (0, 1))).reshape(40, -1, 2)
    assert np.maximum(pairs, 0).sum(-1).max() <= 128 and np.maximum(-pairs, 0).sum(-1).max() <= 128
    orig = np.pad(w.astype(np.int64), ((0, 0), (0, 1))).reshape(40, -1, 2)
    offending = (np.maximum(orig, 0).sum(-1) > 128) | (np.maximum(-orig, 0).sum(-1) > 128)
    assert fv.size == offending.sum() and np.all(fv != 0)
    assert np.array_equal(np.unique(fn * 1000 + fk // 2), np.unique(np.nonzero(offending)[0] * 1000 + np.nonzero(offending)[1]))
    assert (0, 0) in set(zip(fn, fk // 2)) and (0, 1) in set(zip(fn, fk // 2)) and 1 not in fn[fk < 4]
    order = np.lexsort((fk, fn // NR))
    assert np.array_equal(order, np.arange(fv.size))  # sorted by (panel, k), as the kernel walks them


@needs_u8s7
@pytest.mark.parametrize("m,n,k", SHAPES)
def test_gemm_quads_eight_bit_exact(m, n, k):
    """8-bit weights forced into quad panels (uniform codes: about 1 in 8 weights split off as a fix)
    stay exact against the twins, the extremes of both operands included."""
    rng = _rng(m * 5 + n * 11 + k)
    w = _i8(rng, (n, k))
    pw = pack_int8_weight(w, "quads")
    assert pw.layout == "quads" and np.array_equal(pw.w, w)
    a8, au = _i8(rng, (m, k)), _u8(rng, (m, k))
    _eq(gemm_s8s8(a8, pw), R.gemm_s8s8_ref(a8, w))
    for zp in (0, 77, 255):
        _eq(gemm_u8s8(au, zp, pw), R.gemm_u8s8_ref(au, zp, w))
    for wv in (-128, 127):
        we = np.full((n, k), wv, np.int8)
        pe = pack_int8_weight(we, "quads")
        for av in (0, 255):
            ae = np.full((m, k), av, np.uint8)
            _eq(gemm_u8s8(ae, 0, pe), R.gemm_u8s8_ref(ae, 0, we))
        for av in (-128, 127):
            ae = np.full((m, k), av, np.int8)
            _eq(gemm_s8s8(ae, pe), R.gemm_s8s8_ref(ae, we))


@needs_u8s7
def test_quads_chosen_for_few_fixes(split_pairs):
    """auto: a per-tensor Gaussian weight needs few fixes (quads); a 7-bit one none; uniform codes
    too many (pairs). The 8-bit quad GEMM at K_MAX_S8S8, where its int32 terms wrap, is exact."""
    rng = _rng(12)
    w = _gaussian_codes(rng, (768, 768))  # (the max of 0.6 M normals: about 1e-4 of them need a fix)
    pw = pack_int8_weight(w)
    assert pw.layout == "quads" and 0 < pw.fixes[3].size <= G.QUAD_FIX_MAX * w.size
    assert np.array_equal(pw.w, w) and pack_int8_weight(_i7(rng, (3, 5))).fixes[3].size == 0
    assert pack_int8_weight(_i8(rng, (64, 256))).layout == "pairs"
    # int8 a = 127 is 255 in the kernel: sum_k 255 * (-128) = -4.3e9 wraps int32, the true
    # 127 * (-128) * K = -2.1e9 does not; every pair (-128, -128) splits into (-128, 0) + a fix
    K = G.K_MAX_S8S8
    we = np.full((2, K), -128, np.int8)
    ae = np.full((4, K), 127, np.int8)
    pe = pack_int8_weight(we, "quads")
    assert pe.fixes[3].size == 2 * (K // 2)
    _eq(gemm_s8s8(ae, pe), R.gemm_s8s8_ref(ae, we))


def test_microkernel_extreme_pairs_do_not_wrap():
    # every pair sum at its extreme 2 * (-32768) * (-128) = 2^23; 255 pairs = 255 * 2^23 < 2^31
    npairs = 255
    a = np.full(MR * 2 * npairs, -32768, np.int16)
    w = np.full(2 * NR * npairs, -128, np.int16)
    t = np.empty(MR * NR, np.int32)
    microkernel_ir(a, 0, 2 * npairs, w, 0, npairs, t, 0, NR)
    assert np.all(t == 255 * 2**23)


# --------------------------------------------------------------------------------------------- GEMM


@pytest.mark.parametrize("m,n,k", SHAPES)
def test_gemm_s8s8_exact(m, n, k):
    rng = _rng(m * 10007 + n * 101 + k)
    a, w = _i8(rng, (m, k)), _i8(rng, (n, k))
    ref = R.gemm_s8s8_ref(a, w)
    _eq(gemm_s8s8(a, pack_int8_weight(w)), ref)
    _eq(gemm_s8s8(a, w), ref)  # unpacked weight: packed on the fly


@pytest.mark.parametrize("m,n,k", SHAPES)
def test_gemm_u8s8_exact(m, n, k):
    rng = _rng(m * 7 + n * 13 + k)
    a, w = _u8(rng, (m, k)), _i8(rng, (n, k))
    pw = pack_int8_weight(w)
    for zp in (0, 1, 128, 255, int(rng.integers(0, 256))):
        _eq(gemm_u8s8(a, zp, pw), R.gemm_u8s8_ref(a, zp, w))
    # zero-point correction against the plain formula
    zp = 77
    assert np.array_equal(gemm_u8s8(a, zp, w), (a.astype(np.int64) - zp) @ w.astype(np.int64).T)


@pytest.mark.parametrize("m,n,k", SHAPES)
def test_gemm_s16s8_exact(m, n, k):
    rng = _rng(m + n + k)
    a = rng.integers(-32768, 32768, (m, k)).astype(np.int16)
    w = _i8(rng, (n, k))
    pw = pack_int8_weight(w)
    for zp in (0, -32768, 12345):
        _eq(gemm_s16s8(a, pw, zp), R.gemm_s16s8_ref(a, w, zp))


@pytest.mark.parametrize(
    "a_val,w_val,zp",
    [(-128, -128, None), (127, -128, None), (-128, 127, None), (127, 127, None), (0, -128, None)],
)
def test_gemm_s8s8_extremes(a_val, w_val, zp):
    m, n, k = 9, 33, 1023
    a = np.full((m, k), a_val, np.int8)
    w = np.full((n, k), w_val, np.int8)
    _eq(gemm_s8s8(a, w), R.gemm_s8s8_ref(a, w))


@pytest.mark.parametrize("a_val,zp,w_val", [(255, 0, -128), (0, 255, -128), (255, 0, 127), (0, 255, 127), (255, 255, -128)])
def test_gemm_u8s8_extremes(a_val, zp, w_val):
    m, n, k = 5, 17, 4097
    a = np.full((m, k), a_val, np.uint8)
    w = np.full((n, k), w_val, np.int8)
    _eq(gemm_u8s8(a, zp, w), R.gemm_u8s8_ref(a, zp, w))


def test_gemm_s16s8_beyond_int32():
    # K = 3072 at the extremes: 3072 * 2^22 = 1.29e10 overflows int32; the int64 result must be exact
    k = 3072
    a = np.full((3, k), -32768, np.int16)
    w = np.full((5, k), -128, np.int8)
    out = gemm_s16s8(a, w)
    assert out.dtype == np.int64
    assert np.all(out == k * 2**22)
    _eq(out, R.gemm_s16s8_ref(a, w))
    # mixed signs and a zero point that pushes a - zp outside int16
    rng = _rng(1)
    a = rng.choice(np.array([-32768, 32767], np.int16), (4, k))
    w = rng.choice(np.array([-128, 127], np.int8), (7, k))
    _eq(gemm_s16s8(a, w, a_zero_point=-40000), R.gemm_s16s8_ref(a, w, -40000))


def test_gemm_readonly_noncontiguous_inputs(tmp_path):
    rng = _rng(3)
    m, n, k = 33, 47, 129
    w = _i8(rng, (n, k))
    a = _i8(rng, (m, k))
    ref = R.gemm_s8s8_ref(a, w)
    # memory-mapped read-only weight
    path = tmp_path / "w.bin"
    w.tofile(path)
    wmm = np.memmap(path, dtype=np.int8, mode="r", shape=(n, k))
    assert not wmm.flags.writeable
    _eq(gemm_s8s8(a, pack_int8_weight(wmm)), ref)
    # Fortran-ordered and read-only activations and weights
    a_f = np.asfortranarray(a)
    w_ro = w.copy()
    w_ro.setflags(write=False)
    a_ro = a.copy()
    a_ro.setflags(write=False)
    _eq(gemm_s8s8(a_f, w_ro), ref)
    _eq(gemm_s8s8(a_ro, np.asfortranarray(w)), ref)
    # strided views
    big_a = _i8(rng, (2 * m, 3 * k))
    big_w = _i8(rng, (n, 2 * k))
    a_s, w_s = big_a[::2, ::3], big_w[:, ::2]
    _eq(gemm_s8s8(a_s, w_s), R.gemm_s8s8_ref(a_s, w_s))
    au = _u8(rng, (2 * m, k))[::2]
    _eq(gemm_u8s8(au, 3, w_s), R.gemm_u8s8_ref(au, 3, w_s))
    a16 = rng.integers(-32768, 32768, (k, m)).astype(np.int16).T  # transposed view
    _eq(gemm_s16s8(a16, w_ro), R.gemm_s16s8_ref(a16, w_ro))
    # the packed weight keeps the original read-only
    pw = pack_int8_weight(w)
    assert not pw.w.flags.writeable and np.array_equal(pw.w, w)
    assert pw.row_sums.dtype == np.int32 and np.array_equal(pw.row_sums, w.astype(np.int64).sum(1))


def test_gemm_empty_dims():
    w = _i8(_rng(), (5, 7))
    _eq(gemm_s8s8(np.zeros((0, 7), np.int8), w), np.zeros((0, 5), np.int32))
    _eq(gemm_s8s8(np.zeros((3, 0), np.int8), np.zeros((5, 0), np.int8)), np.zeros((3, 5), np.int32))
    _eq(gemm_s16s8(np.zeros((3, 0), np.int16), np.zeros((0, 0), np.int8)), np.zeros((3, 0), np.int64))


def test_gemm_k_bounds_raise():
    # the real bound, checked cheaply: M = 0 and N = 1 keep the arrays at K bytes
    k = G.K_MAX_S8S8 + 1
    with pytest.raises(QuantError, match="overflow"):
        gemm_s8s8(np.zeros((0, k), np.int8), np.zeros((1, k), np.int8))
    k = G.K_MAX_U8S8 + 1
    with pytest.raises(QuantError, match="overflow"):
        gemm_u8s8(np.zeros((0, k), np.uint8), 0, np.zeros((1, k), np.int8))
    # at the bound it is accepted
    k = G.K_MAX_U8S8
    assert gemm_u8s8(np.zeros((0, k), np.uint8), 0, np.zeros((1, k), np.int8)).shape == (0, 1)


def test_gemm_k_bounds_monkeypatched(monkeypatch):
    monkeypatch.setattr(G, "K_MAX_S8S8", 16)
    monkeypatch.setattr(G, "K_MAX_U8S8", 8)
    a, w = _i8(_rng(), (2, 17)), _i8(_rng(), (3, 17))
    with pytest.raises(QuantError):
        gemm_s8s8(a, w)
    with pytest.raises(QuantError):
        bgemm_s8s8(a[None], w[None])
    with pytest.raises(QuantError):
        gemm_u8s8(a.view(np.uint8), 0, w)
    with pytest.raises(QuantError):
        bgemm_u8s8(a.view(np.uint8)[None], 0, w[None])
    with pytest.raises(QuantError):  # a PEG group longer than the bound
        gemm_grouped(a.view(np.uint8), np.array([0, 5, 17]), np.zeros(2, np.int32), np.ones(2, np.float32), w)


def test_gemm_bad_arguments():
    rng = _rng()
    w = _i8(rng, (4, 6))
    with pytest.raises(QuantError, match="int8"):
        gemm_s8s8(np.zeros((2, 6), np.float32), w)
    with pytest.raises(QuantError):
        gemm_s8s8(_i8(rng, (2, 6)), w.astype(np.int16))
    with pytest.raises(InputError, match="K=5"):
        gemm_s8s8(_i8(rng, (2, 5)), w)
    with pytest.raises(InputError):
        gemm_s8s8(_i8(rng, (2, 3, 6)), w)
    with pytest.raises(QuantError, match="zero point"):
        gemm_u8s8(_u8(rng, (2, 6)), 256, w)
    with pytest.raises(QuantError):
        gemm_u8s8(_i8(rng, (2, 6)), 0, w)
    with pytest.raises(QuantError):
        gemm_s8s8(_i8(rng, (2, 6)), [[1, 2]])
    with pytest.raises(InputError):
        bgemm_s8s8(_i8(rng, (2, 3, 6)), _i8(rng, (3, 3, 6)))
    with pytest.raises(InputError):
        gemm_grouped(_u8(rng, (2, 6)), np.array([0, 3, 5]), np.zeros(2, np.int32), np.ones(2, np.float32), w)
    with pytest.raises(InputError):
        gemm_grouped(_u8(rng, (2, 6)), np.array([0, 3, 6]), np.zeros(3, np.int32), np.ones(2, np.float32), w)
    with pytest.raises(QuantError):
        gemm_grouped(_i8(rng, (2, 6)), np.array([0, 3, 6]), np.array([0, 200]), np.ones(2, np.float32), w)
    for zps in (np.array([0, 2**64 - 1], np.uint64), np.array([0.0, 0.5])):  # no wrap-around to -1, no truncation
        with pytest.raises(QuantError):
            gemm_grouped(_i8(rng, (2, 6)), np.array([0, 3, 6]), zps, np.ones(2, np.float32), w)


LAYOUTS = ("pairs", "quads") if HAVE_U8S7 else ("pairs",)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16])
@pytest.mark.parametrize("m,n,k,bounds", [(7, 17, 33, [0, 33]), (5, 33, 129, [0, 1, 64, 65, 129]), (17, 3, 130, [0, 7, 70, 130]),
                                          (8, 19, 128, [0, 32, 64, 128])])  # (whole k-quads: read in place)
def test_gemm_grouped_bit_identical(dtype, m, n, k, bounds, layout):
    """Pair panels, and quad panels (uniform int8 weights: many fixes per group) for 8-bit codes."""
    rng = _rng(k + len(bounds))
    info = np.iinfo(dtype)
    a = rng.integers(info.min, info.max + 1, (m, k)).astype(dtype)
    w = _i8(rng, (n, k))
    G_ = len(bounds) - 1
    if dtype == np.int16:
        zps = rng.integers(-(2**15), 2**15, G_).astype(np.int32)
    else:
        zps = rng.integers(info.min, info.max + 1, G_).astype(np.int32)
    scales = (rng.random(G_) * 1e-2 + 1e-4).astype(np.float32)
    b = np.array(bounds, np.int64)
    pw = pack_int8_weight(w, layout)
    ref = R.gemm_grouped_ref(a, b, zps, scales, w)
    y = gemm_grouped(a, b, zps, scales, pw)
    assert y.dtype == np.float32
    assert np.array_equal(y.view(np.int32), ref.view(np.int32))  # bit for bit
    _eq(gemm_grouped(a, b, zps, scales, pw), ref)  # cached group packs and plan give the same answer
    _eq(gemm_grouped(a, b, zps, scales, w), ref)
    # plans are cached by the arguments' bytes: arrays changed in place get a new, checked plan
    zps2, scales2 = zps.copy(), scales.copy()
    zps2[-1] = info.min if dtype != np.int16 else -7
    scales2[0] *= 3
    want2 = R.gemm_grouped_ref(a, b, zps2, scales2, w)
    zps[...], scales[...] = zps2, scales2
    _eq(gemm_grouped(a, b, zps, scales, pw), want2)
    if dtype != np.int16:
        zps[0] = info.max + 1 if dtype == np.int8 else -1
        with pytest.raises(QuantError, match="outside"):
            gemm_grouped(a, b, zps, scales, pw)
        zps[...] = zps2
    ref = want2
    # W scale, bias and the activation in the tile store: the NumPy epilogue then fused.activation, bitwise
    ws = (rng.random(n) * 1e-2 + 1e-3).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    for act in ("gelu", "gelu_new", "relu"):
        want = activation(act, ref * ws[None, :] + bias)
        got = gemm_grouped(a, b, zps, scales, pw, ws, bias, act)
        assert np.array_equal(got.view(np.int32), want.view(np.int32)), act
    buf = np.full((m, n), np.nan, np.float32)
    assert gemm_grouped(a, b, zps, scales, pw, ws, bias, "gelu", out=buf) is buf
    assert np.array_equal(buf.view(np.int32), activation("gelu", ref * ws[None, :] + bias).view(np.int32))
    with pytest.raises(InputError, match="out must be a writeable C-contiguous float32"):
        gemm_grouped(a, b, zps, scales, pw, out=np.empty((m, n), np.float64))
    with pytest.raises(InputError, match="unknown activation 'swish'"):
        gemm_grouped(a, b, zps, scales, pw, act="swish")


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("wide", [0, 1])
def test_gemm_grouped_at_the_fma_bound(layout, wide):
    """The tile kernels add s * acc with one fma, equal to multiply-then-add only while the product is
    exact (|acc| < 2^29). The wide group comes last, so the fma adds onto a full-precision partial sum
    from the first group: at a width of K_MAX_FMA, with the extreme products and full-mantissa scales,
    the result equals the reference bit for bit; one column wider, the call takes the split-K path
    and does too."""
    K1 = G.K_MAX_FMA + wide
    K = 5 + K1
    rng = _rng(21 + wide)
    a = np.full((5, K), 255, np.uint8)
    a[1] = rng.integers(0, 256, K)
    a[:, :5] = rng.integers(0, 256, (5, 5))
    w = np.full((17, K), -128, np.int8)
    w[3] = rng.integers(-128, 128, K)
    w[4, 5::2] = 127  # alternating signs: no pair of this row needs a fix
    w[:, :5] = rng.integers(-128, 128, (17, 5))
    bounds = np.array([0, 5, K], np.int64)
    zps = np.array([7, 0], np.int32)
    scales = np.array([1 / 3, 2.0**-20 * 1.2345678], np.float32)
    ref = R.gemm_grouped_ref(a, bounds, zps, scales, w)
    got = gemm_grouped(a, bounds, zps, scales, pack_int8_weight(w, layout))
    assert np.array_equal(got.view(np.int32), ref.view(np.int32))


@needs_u8s7
def test_grouped_quads_mix_panels_with_and_without_fixes(split_pairs):
    """Panels with fixes next to panels without: on vnni512 whole fix-free panel pairs run as 4 x 32
    tiles with every group in one call, a pair holding fixes falls back panel by panel, and an odd
    last panel and the last rows take the edge tiles; every float output equals the reference's bits."""
    rng = _rng(17)
    w = _i7(rng, (72, 150))  # five panels, the last one 8 columns wide
    w[16:32, 10:14] = 120  # same-sign pairs in panel 1 only: fixes there
    pw = pack_int8_weight(w, "quads")
    starts = pw.fixes[0]
    assert starts[2] > starts[1] and starts[1] == starts[0] and starts[5] == starts[2]
    bounds, zps = np.array([0, 64, 100, 150]), np.array([0, 17, 255])
    scales = np.array([0.25, 1 / 3, 3.0], np.float32)
    ws, bias = rng.random(72).astype(np.float32), rng.standard_normal(72).astype(np.float32)
    for m in (1, 4, 13):
        a = _u8(rng, (m, 150))
        ref = R.gemm_grouped_ref(a, bounds, zps, scales, w)
        _eq(gemm_grouped(a, bounds, zps, scales, pw).view(np.int32), ref.view(np.int32))
        got = gemm_grouped(a, bounds, zps, scales, pw, w_scale=ws, bias=bias)
        _eq(got.view(np.int32), (ref * ws + bias).view(np.int32))
        _eq(gemm_grouped(a, bounds, zps, scales, pw, w_scale=ws).view(np.int32), (ref * ws).view(np.int32))
        _eq(gemm_grouped(a, bounds, zps, scales, pw, bias=bias).view(np.int32), (ref + bias).view(np.int32))


@needs_u8s7
def test_quads_without_fixes_at_the_k_bounds():
    """The default packing (on VNNI: full-range 8-bit weights as quads, no fixes) at K_MAX_S8S8 and
    K_MAX_U8S8, where the uint8 + 128 operands' int32 terms wrap: the sums are still exact, for the
    linear GEMM and for the batched attention GEMM (quad panels packed per call on VNNI)."""
    K = G.K_MAX_S8S8
    we = np.full((2, K), -128, np.int8)
    ae = np.full((4, K), 127, np.int8)
    _eq(gemm_s8s8(ae, pack_int8_weight(we)), R.gemm_s8s8_ref(ae, we))
    _eq(bgemm_s8s8(ae[None], we[None]), R.gemm_s8s8_ref(ae, we)[None])
    _eq(bgemm_s8s8(-ae[None], we[None]), R.gemm_s8s8_ref(-ae, we)[None])
    K = G.K_MAX_U8S8
    we = np.full((3, K), -128, np.int8)
    au = np.full((2, K), 255, np.uint8)
    _eq(gemm_u8s8(au, 0, pack_int8_weight(we)), R.gemm_u8s8_ref(au, 0, we))
    _eq(bgemm_u8s8(au[None], 0, we[None]), R.gemm_u8s8_ref(au, 0, we)[None])
    _eq(bgemm_u8s8(au[None], 0, np.ascontiguousarray(we.T)[None], b_kn=True), R.gemm_u8s8_ref(au, 0, we)[None])


@needs_u8s7
def test_quads_weight_unpacking_leaves_the_panels_alone(split_pairs):
    """.w adds the fixes to a copy: with one k-quad (K = 4) the unpacked array would otherwise be a view
    of the panels. Reading it twice, then the GEMM, still gives the original weight and exact sums."""
    w = np.full((16, 4), 100, np.int8)
    w[:, 2:] = -90
    pw = pack_int8_weight(w, "quads")
    assert pw.fixes[3].size == 32
    panels = pw.panels.copy()
    assert np.array_equal(pw.w, w) and np.array_equal(pw.w, w)
    assert np.array_equal(pw.panels, panels)
    a = _i8(_rng(3), (5, 4))
    _eq(gemm_s8s8(a, pw), R.gemm_s8s8_ref(a, w))
    e = pack_int8_weight(np.zeros((0, 8), np.int8), "quads")  # empty: panel starts still [NP + 1]
    assert e.fixes[0].shape == (1,)
    y = gemm_grouped(_u8(_rng(4), (3, 8)), np.array([0, 4, 8]), np.zeros(2, np.int32), np.ones(2, np.float32), e)
    assert y.shape == (3, 0)


def test_gemm_grouped_plan_cache_keys_and_bound():
    """Cached plans are keyed by dtype (byte order included), shape and bytes: the same bytes read as
    big-endian are another zero point and get checked; past _PLANS_MAX plans the cache starts over."""
    rng = _rng(8)
    a = _u8(rng, (4, 12))
    w = _i8(rng, (5, 12))
    pw = pack_int8_weight(w)
    b = np.array([0, 5, 12])
    zp = np.array([3, 4], "<i2")
    sc = np.array([1.0, 0.5], "<f4")
    _eq(gemm_grouped(a, b, zp, sc, pw), R.gemm_grouped_ref(a, b, zp, sc, w))
    with pytest.raises(QuantError, match="outside"):  # 3 -> 768 when the same bytes are big-endian
        gemm_grouped(a, b, zp.view(">i2"), sc, pw)
    for i in range(G._PLANS_MAX + 3):
        sc_i = np.array([1.0 + i, 0.5], np.float32)
        _eq(gemm_grouped(a, b, zp, sc_i, pw), R.gemm_grouped_ref(a, b, zp, sc_i, w))
    assert sum(isinstance(k, tuple) for k in pw._groups) <= G._PLANS_MAX


@pytest.mark.parametrize("b,m,n,k", [(1, 1, 1, 1), (3, 7, 17, 33), (5, 33, 16, 64), (2, 129, 127, 3), (4, 128, 64, 128)])
def test_bgemm_exact(b, m, n, k):
    rng = _rng(b * m + n * k)
    a, bb = _i8(rng, (b, m, k)), _i8(rng, (b, n, k))
    _eq(bgemm_s8s8(a, bb), R.bgemm_s8s8_ref(a, bb))
    au = _u8(rng, (b, m, k))
    for zp in (0, 128, 255):
        _eq(bgemm_u8s8(au, zp, bb), R.bgemm_u8s8_ref(au, zp, bb))
    # non-contiguous inputs (V^T as a transposed view, as attention produces it)
    v = _i8(rng, (b, k, n))
    vt = v.transpose(0, 2, 1)
    _eq(bgemm_s8s8(a, vt), R.bgemm_s8s8_ref(a, vt))
    # b given as [B, K, N] (b_kn: V as stored), read transposed while packing: same results, no copy
    _eq(bgemm_s8s8(a, v, b_kn=True), R.bgemm_s8s8_ref(a, vt))
    _eq(bgemm_u8s8(au, 77, v, b_kn=True), R.bgemm_u8s8_ref(au, 77, vt))
    with pytest.raises(InputError, match=r"b \[B, K, N\]"):
        bgemm_s8s8(a, bb, b_kn=True) if n != k else bgemm_s8s8(a, _i8(rng, (b, k + 1, n)), b_kn=True)


# ---------------------------------------------------------------------------------------- selection


@pytest.mark.parametrize("L", [1, 2, 3, 4, 5, 7, 8, 63, 64, 65, 128, 1000])
def test_selection_matches_numpy(L):
    rng = _rng(L)
    for kind in range(4):
        v = [
            rng.standard_normal(L),
            rng.integers(0, 3, L),  # many duplicates
            np.sort(rng.random(L)),  # sorted input
            np.sort(rng.random(L))[::-1],
        ][kind].astype(np.float32)
        v_copy = v.copy()
        for k in sorted({0, L // 2, L - 1, int(rng.integers(0, L))}):
            assert select_kth(v, k) == np.partition(v, k)[k]
        for p in (0.0, 0.25, 0.5, 0.75, 1.0, 0.1, 0.9, float(rng.random())):
            assert quantile_linear(v, p) == np.quantile(v, p, method="linear")
        assert tmiqr_threshold(v) == R.tmiqr_threshold_ref(v)
        assert np.array_equal(v, v_copy)  # the caller's array is untouched


def test_selection_adversarial_and_errors():
    # organ-pipe and all-equal inputs: no quadratic blow-up, right answers
    L = 4097
    organ = np.concatenate([np.arange(L // 2), np.arange(L // 2 + 1)[::-1]]).astype(np.float32)
    for v in (organ, np.zeros(L, np.float32), np.arange(L, dtype=np.float32)[::-1].copy()):
        for k in (0, 1, L // 4, L // 2, L - 1):
            assert select_kth(v, k) == np.partition(v, k)[k]
    with pytest.raises(InputError):
        select_kth(np.zeros(0, np.float32), 0)
    with pytest.raises(InputError):
        select_kth(np.zeros(3, np.float32), 3)
    with pytest.raises(InputError):
        quantile_linear(np.array([1.0, np.nan], np.float32), 0.5)
    with pytest.raises(InputError):
        quantile_linear(np.ones(3, np.float32), 1.5)
    with pytest.raises(InputError):
        tmiqr_threshold(np.zeros(0, np.float32))


def test_tmiqr_single_token_and_float64():
    assert tmiqr_threshold(np.array([3.5], np.float32)) == 3.5
    v = _rng().random(50)
    assert tmiqr_threshold(v) == R.tmiqr_threshold_ref(v)


# ----------------------------------------------------------------------------------------- quantize


def _segments(rng, M, nseg):
    cuts = np.sort(rng.integers(0, M + 1, nseg - 1))
    return np.concatenate([[0], cuts, [M]]).astype(np.int64)


@pytest.mark.parametrize("bits", [2, 4, 8, 9, 12, 16])
@pytest.mark.parametrize("tmiqr", [False, True])
def test_quantize_dynamic_equals_reference(bits, tmiqr):
    rng = _rng(bits + 100 * tmiqr)
    M, K = 37, 65
    x = (rng.standard_normal((M, K)) * rng.choice([0.01, 1.0, 30.0], (M, 1))).astype(np.float32)
    x[5, 3] = 400.0  # an outlier token
    for seg in (np.array([0, M]), np.arange(M + 1), _segments(rng, M, 4)):
        valid = rng.random(M) < 0.8
        for rv in (None, valid):
            q, s, t = quantize_dynamic(x, seg, rv, bits=bits, tmiqr=tmiqr)
            qr, sr, tr = R.quantize_dynamic_ref(x, seg, rv, bits=bits, tmiqr=tmiqr)
            _eq(q, qr)
            _eq(s, sr)
            _eq(t, tr)
            assert q.dtype == (np.int8 if bits <= 8 else np.int16)
            # the single-call variant returns the same codes plus each row's segment scale
            q2, row_scale, s2, t2 = quantize_dynamic_rows(x, seg, rv, bits=bits, tmiqr=tmiqr)
            _eq(q2, qr)
            _eq(s2, sr)
            _eq(t2, tr)
            _eq(row_scale, np.repeat(sr, np.diff(seg)).astype(np.float32))
            buf = np.full(x.shape, 99, q.dtype)
            assert quantize_dynamic_rows(x, seg, rv, bits=bits, tmiqr=tmiqr, out=buf)[0] is buf
            _eq(buf, qr)
            if bits <= 8:  # unsigned: the same grid shifted by 128 into uint8 (zero point 128)
                qu, rsu, su, tu = quantize_dynamic_rows(x, seg, rv, bits=bits, tmiqr=tmiqr, unsigned=True)
                _eq(qu, (qr.astype(np.int16) + 128).astype(np.uint8))
                _eq(rsu, row_scale)
                _eq(su, sr)
                _eq(tu, tr)
            else:
                with pytest.raises(QuantError, match="unsigned"):
                    quantize_dynamic_rows(x, seg, rv, bits=bits, unsigned=True)
    with pytest.raises(InputError, match="overlap"):
        quantize_dynamic_rows(x, np.array([0, M]), None, bits=16, out=x.view(np.int16).reshape(-1)[: M * K].reshape(M, K))


@pytest.mark.parametrize("tmiqr", [False, True])
def test_quantize_dynamic_heads_is_the_transposed_rows(tmiqr):
    """Head-major codes [B, h, T, d] equal quantize_dynamic_rows' codes of the rows b*T + t, reshaped
    [B, T, h, d] and transposed, with the same scales; bad head counts and bit widths are refused."""
    from npbert.kernels.quantize import quantize_dynamic_heads

    rng = _rng(7 + tmiqr)
    B, T, C, h = 3, 11, 36, 6
    x = (rng.standard_normal((B, T, C)) * rng.choice([0.1, 3.0], (B, T, 1))).astype(np.float32)
    seg = np.arange(B + 1) * T
    valid = rng.random(B * T) < 0.7
    for bits in (4, 8):
        q, rs, s, t = quantize_dynamic_rows(x.reshape(-1, C), seg, valid, bits=bits, tmiqr=tmiqr)
        out = np.full((B, h, T, C // h), 99, np.int8)
        qh, rsh, sh, th = quantize_dynamic_heads(x, h, seg, valid, bits=bits, tmiqr=tmiqr, out=out)
        assert qh is out
        _eq(qh, np.ascontiguousarray(q.reshape(B, T, h, C // h).transpose(0, 2, 1, 3)))
        _eq(rsh, rs)
        _eq(sh, s)
        _eq(th, t)
    # a column block of a wider array (query, key, value from one GEMM), read in place: the same as
    # that block copied out
    wide = np.concatenate([x * 7, x, x[..., :12] * 0.5], axis=-1)  # [B, T, 2C + 12]
    for cols, ref_x in (((C, 2 * C), x), ((0, C), x * 7), ((2 * C, 2 * C + 12), x[..., :12] * 0.5)):
        hh = h if ref_x.shape[-1] == C else 3
        ref = quantize_dynamic_heads(np.ascontiguousarray(ref_x), hh, seg, valid, tmiqr=tmiqr)
        got = quantize_dynamic_heads(wide, hh, seg, valid, tmiqr=tmiqr, columns=cols)
        for g, r in zip(got, ref):
            _eq(g, r)
    for cols in ((0, 0), (-1, 5), (C, 3 * C), (0, C, 2 * C)):
        with pytest.raises(InputError, match="columns"):
            quantize_dynamic_heads(wide, h, seg, columns=cols)
    # all three blocks of a [B, T, 3C] GEMM output in one call: each as its own tensor
    from npbert.kernels.quantize import quantize_dynamic_heads_split

    wide3 = np.concatenate([x * 7, x, x * 0.01], axis=-1)
    out3 = np.full((3, B, h, T, C // h), 99, np.int8)
    got = quantize_dynamic_heads_split(wide3, 3, h, seg, valid, tmiqr=tmiqr, out=out3)
    assert got[0] is out3
    for i in range(3):
        ref = quantize_dynamic_heads(wide3, h, seg, valid, tmiqr=tmiqr, columns=(i * C, (i + 1) * C))
        for g, r in zip(got, ref):
            _eq(g[i], r)
    with pytest.raises(InputError, match="parts=5"):
        quantize_dynamic_heads_split(wide3, 5, h, seg)
    bad3 = wide3.copy()
    bad3[1, 3, 2 * C + 1] = np.inf
    with pytest.raises(InputError, match=r"quantize_dynamic_heads_split \(part 2\): Inf in sequence 1, token 3"):
        quantize_dynamic_heads_split(bad3, 3, h, seg)
    # a NaN outside the block is not the block's business; inside it is reported at its token
    nan = wide.copy()
    nan[2, 4, 0] = np.nan  # in the first block
    quantize_dynamic_heads(nan, h, seg, columns=(C, 2 * C))
    with pytest.raises(InputError, match="quantize_dynamic_heads: NaN in sequence 2, token 4"):
        quantize_dynamic_heads(nan, h, seg, columns=(0, C))
    with pytest.raises(InputError, match="divide"):
        quantize_dynamic_heads(x, 5, seg)
    with pytest.raises(QuantError, match="bits"):
        quantize_dynamic_heads(x, h, seg, bits=12)
    bad = x.copy()
    bad[1, 2, 3] = np.nan
    with pytest.raises(InputError, match="quantize_dynamic_heads: NaN in sequence 1, token 2"):
        quantize_dynamic_heads(bad, h, seg)


def test_quantize_dynamic_error_bound_and_clamp():
    rng = _rng(5)
    M, K = 64, 96
    x = (rng.standard_normal((M, K)) * 3).astype(np.float32)
    x[::7] *= 20  # heavy tokens so that TM-IQR clips something
    seg = np.array([0, 32, 64])
    for bits in (4, 8, 16):
        qmax = 2 ** (bits - 1) - 1
        for tm in (False, True):
            q, s, t = quantize_dynamic(x, seg, None, bits=bits, tmiqr=tm)
            for g in range(2):
                xs = x[seg[g] : seg[g + 1]].astype(np.float64)
                qs = q[seg[g] : seg[g + 1]].astype(np.float64)
                sc, th = float(s[g]), float(t[g])
                assert np.isclose(sc, th / qmax, rtol=2**-23)
                inside = np.abs(xs) <= th
                # |x - q s| <= s/2 from rounding to nearest, plus the float32 division's relative
                # error 2^-24 on |x/s| <= qmax (in units of s): s * qmax * 2^-23 covers it
                err = np.abs(xs - qs * sc)[inside]
                assert np.all(err <= sc * (0.5 + qmax * 2.0**-23))
                assert np.all(np.abs(qs[~inside]) == qmax)
                assert np.all(np.sign(qs[~inside]) == np.sign(xs[~inside]))
                if tm:
                    assert th <= np.abs(xs).max()


def test_quantize_dynamic_padding_rows_do_not_change_scales():
    rng = _rng(6)
    M, K = 24, 40
    x = rng.standard_normal((M, K)).astype(np.float32)
    valid = np.ones(M, bool)
    valid[[3, 10, 11, 23]] = False
    seg = np.array([0, 12, 24])
    for tm in (False, True):
        base = quantize_dynamic(x, seg, valid, tmiqr=tm)
        x2 = x.copy()
        x2[~valid] = rng.choice([1e6, -1e6, np.inf, -np.inf, np.nan], (int((~valid).sum()), K)).astype(np.float32)
        q2, s2, t2 = quantize_dynamic(x2, seg, valid, tmiqr=tm)
        _eq(s2, base[1])
        _eq(t2, base[2])
        _eq(q2[valid], base[0][valid])
        assert np.all(np.abs(q2[~valid].astype(np.int64)) <= 127)  # padding still clamped
        qr = R.quantize_dynamic_ref(x2, seg, valid, tmiqr=tm)[0]
        _eq(q2, qr)


@pytest.mark.parametrize("bits", [2, 8, 16])
def test_quantize_dynamic_threshold_edges_equal_reference(bits):
    """The clip to [-t, t] is left out where the clamp implies it (t >= 2^-100, quantize._CLIP_FREE_T):
    on both sides of that bound, at t = 0 (scale 1.0), with tiny thresholds whose scales are subnormal,
    near float32's largest values, and with padding rows far outside [-t, t], the codes are the
    reference's (which always clips), for the row and the head-major quantizers alike."""
    from npbert.kernels.quantize import _CLIP_FREE_T, quantize_dynamic_heads

    rng = _rng(900 + bits)
    M, K = 12, 32
    edge = float(_CLIP_FREE_T)
    for amax in (0.0, 1e-38, 1e-33, np.nextafter(np.float32(edge), np.float32(0)), edge, 3.0, 3.0e38):
        x = (rng.uniform(-1, 1, (M, K)) * np.float32(amax)).astype(np.float32)
        x[0, 0] = np.float32(amax)  # the threshold is met exactly
        valid = np.ones(M, bool)
        valid[[4, 9]] = False  # padding: values far outside [-t, t], and non-finite ones
        x[4] = rng.choice([5.3, -7.0, 1e30, -3e38], K).astype(np.float32)
        x[9] = rng.choice([np.inf, -np.inf, np.nan, 2.0], K).astype(np.float32)
        seg = np.array([0, 6, M])
        for tm in (False, True):
            q, s, t = quantize_dynamic(x, seg, valid, bits=bits, tmiqr=tm)
            qr, sr, tr = R.quantize_dynamic_ref(x, seg, valid, bits=bits, tmiqr=tm)
            _eq(q, qr)
            _eq(s, sr)
            if bits <= 8:
                qh = quantize_dynamic_heads(x.reshape(2, 6, K), 4, seg, valid, bits=bits, tmiqr=tm)[0]
                _eq(qh, qr.reshape(2, 6, 4, K // 4).transpose(0, 2, 1, 3))


def test_quantize_dynamic_zero_and_symmetry():
    x = np.zeros((4, 8), np.float32)
    q, s, t = quantize_dynamic(x, np.array([0, 2, 4]), None)
    assert np.all(q == 0) and np.all(s == 1.0) and np.all(t == 0.0)
    rng = _rng(7)
    x = rng.standard_normal((6, 9)).astype(np.float32)
    x[2, 4] = 0.0
    x[3, 1] = -0.0
    q, s, _ = quantize_dynamic(x, np.array([0, 6]), None)
    assert q[2, 4] == 0 and q[3, 1] == 0
    qn, sn, _ = quantize_dynamic(-x, np.array([0, 6]), None)
    _eq(qn, -q)  # symmetric: q(-x) = -q(x)
    _eq(sn, s)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_quantize_nonfinite_raise(bad):
    x = np.ones((5, 7), np.float32)
    x[2, 3] = bad
    name = "NaN" if np.isnan(bad) else "Inf"
    with pytest.raises(InputError, match=name):
        quantize_dynamic(x, np.array([0, 5]), None)
    with pytest.raises(InputError):
        quantize_static(x, 0.1, 0, -128, 127, np.int8)
    with pytest.raises(InputError):
        quantize_static_grouped(x, np.array([0, 3, 7]), np.ones(2, np.float32), np.zeros(2, np.int32), 0, 255, np.uint8)


def test_quantize_dynamic_bad_requests():
    x = np.ones((4, 3), np.float32)
    for bits in (1, 17, 0):
        with pytest.raises(QuantError):
            quantize_dynamic(x, np.array([0, 4]), None, bits=bits)
    with pytest.raises(InputError):
        quantize_dynamic(x, np.array([0, 3]), None)
    with pytest.raises(InputError):
        quantize_dynamic(x, np.array([0, 3, 2, 4]), None)
    for seg in (np.array([1, 4]), np.array([0.0, 4.0]), np.array([[0, 4]]), np.zeros(0, np.int64)):
        with pytest.raises(InputError, match="seg_starts"):
            quantize_dynamic(x, seg, None)
    with pytest.raises(InputError):
        quantize_dynamic(x, np.array([0, 4]), np.ones(3, bool))
    with pytest.raises(QuantError):
        quantize_dynamic(x.astype(np.float64), np.array([0, 4]), None)


@pytest.mark.parametrize(
    "qmin,qmax,dtype,zp", [(-128, 127, np.int8, 0), (0, 255, np.uint8, 128), (-32768, 32767, np.int16, -5), (0, 15, np.uint8, 8)]
)
def test_quantize_static_equals_reference(qmin, qmax, dtype, zp):
    rng = _rng(qmax)
    x = (rng.standard_normal((3, 17, 33)) * 50).astype(np.float32)
    x[0, 0, :4] = [0.5, 1.5, -0.5, 2.5]  # ties round to even
    for scale in (0.1, 1.0, 0.37, 1e-3):
        q = quantize_static(x, scale, zp, qmin, qmax, dtype)
        _eq(q, R.quantize_static_ref(x, scale, zp, qmin, qmax, dtype))
    q = quantize_static(x, 1.0, 0, qmin, qmax, dtype)
    if qmin <= -3:
        assert list(q[0, 0, :4]) == [0, 2, 0, 2]
    xt = x.transpose(2, 0, 1)  # non-contiguous
    _eq(quantize_static(xt, 0.3, zp, qmin, qmax, dtype), R.quantize_static_ref(xt, 0.3, zp, qmin, qmax, dtype))


def test_quantize_static_grouped_equals_reference():
    rng = _rng(8)
    x = (rng.standard_normal((19, 70)) * 10).astype(np.float32)
    b = np.array([0, 3, 40, 70])
    scales = np.array([0.05, 0.2, 0.01], np.float32)
    zps = np.array([128, 0, 255], np.int32)
    _eq(
        quantize_static_grouped(x, b, scales, zps, 0, 255, np.uint8),
        R.quantize_static_grouped_ref(x, b, scales, zps, 0, 255, np.uint8),
    )
    with pytest.raises(QuantError):
        quantize_static(x, 0.0, 0, -128, 127, np.int8)
    with pytest.raises(QuantError):
        quantize_static(x, 0.1, 300, 0, 255, np.uint8)
    with pytest.raises(QuantError):
        quantize_static(x, 0.1, 0, -200, 127, np.int8)


@pytest.mark.parametrize("acc_dtype", [np.int32, np.int64])
def test_requantize_equals_reference(acc_dtype):
    rng = _rng(9)
    info = np.iinfo(np.int32)
    acc = rng.integers(info.min, info.max, (13, 21)).astype(acc_dtype)
    mult = rng.random(21) * 1e-6
    for m, zp, lo, hi, dt in ((mult, 0, -128, 127, np.int8), (3.1e-7, 128, 0, 255, np.uint8), (mult * 100, -3, -32768, 32767, np.int16)):
        _eq(requantize(acc, m, zp, lo, hi, dt), R.requantize_ref(acc, m, zp, lo, hi, dt))
    with pytest.raises(InputError):
        requantize(acc, np.ones(20), 0, -128, 127, np.int8)
    with pytest.raises(QuantError):
        requantize(acc.astype(np.float32), 1.0, 0, -128, 127, np.int8)


def test_add_requant_equals_reference_and_saturating_add():
    rng = _rng(10)
    for da, db in itertools.product((np.int8, np.uint8, np.int16), repeat=2):
        ia, ib = np.iinfo(da), np.iinfo(db)
        a = rng.integers(ia.min, ia.max + 1, (9, 31)).astype(da)
        b = rng.integers(ib.min, ib.max + 1, (9, 31)).astype(db)
        args = (a, 0.02, 3, b, 0.05, -2, 0.07, 1, -128, 127, np.int8)
        _eq(add_requant(*args), R.add_requant_ref(*args))
    # equal scales and zero points: exact saturating integer addition
    for dt, lo, hi in ((np.int8, -128, 127), (np.int16, -32768, 32767)):
        info = np.iinfo(dt)
        a = rng.integers(info.min, info.max + 1, (50, 40)).astype(dt)
        b = rng.integers(info.min, info.max + 1, (50, 40)).astype(dt)
        a[0, :3] = [info.max, info.min, info.max]
        b[0, :3] = [info.max, info.min, info.min]
        s = 0.0123
        out = add_requant(a, s, 0, b, s, 0, s, 0, lo, hi, dt)
        _eq(out, np.clip(a.astype(np.int64) + b.astype(np.int64), lo, hi).astype(dt))
        z = 5
        out = add_requant(a, s, z, b, s, z, s, z, lo, hi, dt)
        _eq(out, np.clip(a.astype(np.int64) + b.astype(np.int64) - z, lo, hi).astype(dt))
    with pytest.raises(InputError):
        add_requant(a, 1, 0, b[:, :3], 1, 0, 1, 0, -128, 127, np.int8)


def test_gemm_out_arguments():
    """out= writes into a caller's buffer (the quantized forward reuses its accumulators) with the
    same result; a buffer of the wrong kind is refused with an InputError that says what is needed."""
    from npbert.kernels import fused
    from npbert.kernels.gemm import bgemm_s8s8, bgemm_u8s8, gemm_s8s8, gemm_u8s8, pack_int8_weight

    rng = np.random.default_rng(5)
    a = rng.integers(-128, 128, (9, 21)).astype(np.int8)
    au = rng.integers(0, 256, (9, 21)).astype(np.uint8)
    pw = pack_int8_weight(rng.integers(-128, 128, (13, 21)).astype(np.int8))
    out = np.full((9, 13), 7, np.int32)
    assert gemm_s8s8(a, pw, out=out) is out and np.array_equal(out, gemm_s8s8(a, pw))
    assert np.array_equal(gemm_u8s8(au, 3, pw, out=out), gemm_u8s8(au, 3, pw))
    for bad in (np.zeros((9, 13), np.int64), np.zeros((9, 12), np.int32), np.zeros((13, 9), np.int32).T):
        with pytest.raises(InputError, match="out must be"):
            gemm_s8s8(a, pw, out=bad)
    qa, qb = rng.integers(-128, 128, (2, 5, 7)).astype(np.int8), rng.integers(-128, 128, (2, 6, 7)).astype(np.int8)
    bo = np.full((2, 5, 6), -1, np.int32)
    assert np.array_equal(bgemm_s8s8(qa, qb, out=bo), bgemm_s8s8(qa, qb)) and np.array_equal(bo, bgemm_s8s8(qa, qb))
    ua = rng.integers(0, 256, (2, 5, 7)).astype(np.uint8)
    assert np.array_equal(bgemm_u8s8(ua, 9, qb, out=bo), bgemm_u8s8(ua, 9, qb))
    with pytest.raises(InputError, match="out must be"):
        bgemm_s8s8(qa, qb, out=np.zeros((2, 5, 5), np.int32))
    acc = gemm_s8s8(a, pw)
    fo = np.empty((9, 13), np.float32)
    ws = np.full(13, 0.01, np.float32)
    assert np.array_equal(fused.epilogue(acc, 0.5, ws, None, "gelu", out=fo), fused.epilogue(acc, 0.5, ws, None, "gelu"))


@pytest.mark.parametrize("dt", [np.uint8, np.int8, np.int16])
def test_gemm_grouped_fused_scale_and_bias(dt):
    """w_scale / bias inside gemm_grouped round exactly like `gemm_grouped(...) * w_scale + bias` in NumPy."""
    from npbert.kernels.gemm import gemm_grouped, pack_int8_weight

    rng = np.random.default_rng(11)
    M, K, N = 11, 45, 37
    info = np.iinfo(dt)
    a = rng.integers(info.min, int(info.max) + 1, (M, K)).astype(dt)
    pw = pack_int8_weight(rng.integers(-128, 128, (N, K)).astype(np.int8))
    bounds = np.array([0, 7, 20, 33, 45])
    zps = rng.integers(0, 256, 4) if dt == np.uint8 else rng.integers(-128, 128, 4)
    sc = rng.uniform(1e-4, 1e-2, 4).astype(np.float32)
    ws = rng.uniform(1e-3, 1e-1, N).astype(np.float32)
    b = rng.standard_normal(N).astype(np.float32)
    base = gemm_grouped(a, bounds, zps, sc, pw)
    np.testing.assert_array_equal(gemm_grouped(a, bounds, zps, sc, pw, ws, b), base * ws[None, :] + b)
    np.testing.assert_array_equal(gemm_grouped(a, bounds, zps, sc, pw, ws), base * ws[None, :])
    with pytest.raises(InputError, match="w_scale must have shape"):
        gemm_grouped(a, bounds, zps, sc, pw, ws[:-1])


@pytest.mark.parametrize("dts", [(np.uint8, np.uint8, np.uint8), (np.int16, np.int16, np.int16), (np.int8, np.uint8, np.int8)])
def test_add_requant_grouped_equals_add_requant_per_group(dts):
    """One pass over all column groups == add_requant on each group's columns (the PEG residual sum)."""
    from npbert.kernels.quantize import add_requant_grouped

    rng = np.random.default_rng(12)
    da, db, do = dts
    shape = (3, 5, 29)
    a = rng.integers(np.iinfo(da).min, int(np.iinfo(da).max) + 1, shape).astype(da)
    b = rng.integers(np.iinfo(db).min, int(np.iinfo(db).max) + 1, shape).astype(db)
    bounds = np.array([0, 4, 11, 12, 29])
    G = 4
    sa, sb, so = (rng.uniform(1e-3, 1e-1, G) for _ in range(3))
    za = rng.integers(0, 10, G)
    zb = rng.integers(0, 10, G)
    zo = rng.integers(0, 10, G)
    qi = np.iinfo(do)
    got = add_requant_grouped(a, sa, za, b, sb, zb, so, zo, bounds, qi.min, qi.max, do)
    for g in range(G):
        s = slice(bounds[g], bounds[g + 1])
        ref = add_requant(np.ascontiguousarray(a[..., s]), sa[g], int(za[g]), np.ascontiguousarray(b[..., s]), sb[g], int(zb[g]),
                          float(so[g]), int(zo[g]), qi.min, qi.max, do)
        np.testing.assert_array_equal(got[..., s], ref)
    with pytest.raises(QuantError, match="out_scales must be finite and > 0"):
        add_requant_grouped(a, sa, za, b, sb, zb, np.zeros(G), zo, bounds, qi.min, qi.max, do)


def _dequant_ref(acc, row_scale, ws, bias):
    """The NumPy expression gemm_dequant / fused.epilogue compute: float32(float64(acc) * rs) * ws + b."""
    rs = np.broadcast_to(np.asarray(row_scale, np.float64), (acc.shape[0],))
    y = (acc.astype(np.float64) * rs[:, None]).astype(np.float32) * ws[None, :]
    return y if bias is None else y + bias


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("m,n,k", [(1, 1, 1), (3, 17, 33), (4, 16, 64), (5, 31, 130), (9, 48, 12), (129, 33, 7)])
def test_gemm_dequant_bit_identical(m, n, k, layout):
    """The GEMM with the dequantization in its registers (quads) or as a second pass (pairs) equals
    the NumPy expression on the exact integer result bit for bit: per-row and scalar scales, with and
    without bias, int8 and uint8 codes, and with the activation equal to fused.activation after."""
    rng = _rng(m * 7 + n * 3 + k)
    w = _i8(rng, (n, k))
    pw = pack_int8_weight(w, layout)
    ws = rng.uniform(1e-4, 1e-1, n).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32)
    rs = rng.uniform(1e-5, 1e-2, m).astype(np.float32)
    a8, au = _i8(rng, (m, k)), _u8(rng, (m, k))
    for a, zp, acc in ((a8, 0, R.gemm_s8s8_ref(a8, w)), (au, 77, R.gemm_u8s8_ref(au, 77, w))):
        for scale in (rs, np.float32(0.0031)):
            for bias in (b, None):
                ref = _dequant_ref(acc, scale, ws, bias)
                _eq(G.gemm_dequant(a, zp, pw, scale, ws, bias), ref)
                _eq(G.gemm_dequant(a, zp, pw, scale, ws, bias, "gelu"), activation("gelu", ref))
    out = np.full((m, n), np.nan, np.float32)
    assert G.gemm_dequant(a8, 0, pw, rs, ws, b, out=out) is out
    _eq(out, _dequant_ref(R.gemm_s8s8_ref(a8, w), rs, ws, b))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_concat_packed_is_the_parts_side_by_side(layout, split_pairs):
    """Stacked weights (attention's q, k, v in one GEMM) give the parts' GEMMs side by side bit for bit,
    8-bit quad fixes included; afterwards the parts read views of the stack (one copy of the bytes)
    and still unpack to themselves; parts that cannot stack whole panels are refused."""
    rng = _rng(41)
    ws = [_i8(rng, (n, 70)) for n in (32, 16, 48)]  # uniform 8-bit codes: quads carry many fixes
    parts = [pack_int8_weight(w, layout) for w in ws]
    if layout == "quads":  # every part carries fixes: the stack's panel starts must shift by them
        assert all(p.fixes[3].size for p in parts)
    fused = G.concat_packed(parts)
    w_all = np.concatenate(ws)
    assert fused.shape == (96, 70) and np.array_equal(fused.w, w_all)
    a8, au = _i8(rng, (9, 70)), _u8(rng, (9, 70))
    a16 = rng.integers(-32768, 32768, (9, 70)).astype(np.int16)
    _eq(gemm_s8s8(a8, fused), R.gemm_s8s8_ref(a8, w_all))
    _eq(gemm_u8s8(au, 77, fused), R.gemm_u8s8_ref(au, 77, w_all))
    _eq(G.gemm_s16s8(a16, fused), R.gemm_s16s8_ref(a16, w_all))  # (quads: through the stack's pair repack)
    scale = rng.uniform(1e-4, 1e-1, 96).astype(np.float32)
    b = rng.standard_normal(96).astype(np.float32)
    rs = rng.uniform(1e-5, 1e-2, 9).astype(np.float32)
    y = G.gemm_dequant(au, 77, fused, rs, scale, b)
    n0 = 0
    for w, p in zip(ws, parts):
        n1 = n0 + w.shape[0]
        assert np.shares_memory(p.panels, fused.panels) and np.array_equal(p.w, w)
        _eq(gemm_s8s8(a8, p), R.gemm_s8s8_ref(a8, w))
        _eq(gemm_u8s8(au, 77, p), R.gemm_u8s8_ref(au, 77, w))
        _eq(G.gemm_dequant(au, 77, p, rs, scale[n0:n1], b[n0:n1]), y[:, n0:n1])
        n0 = n1
    with pytest.raises(QuantError, match="multiple of"):
        G.concat_packed([pack_int8_weight(_i8(rng, (16, 8)), layout), pack_int8_weight(_i8(rng, (5, 8)), layout)])
    with pytest.raises(QuantError, match="one K"):
        G.concat_packed([pack_int8_weight(_i8(rng, (16, 8)), layout), pack_int8_weight(_i8(rng, (16, 9)), layout)])
    with pytest.raises(QuantError, match="non-empty"):
        G.concat_packed([])


def test_gemm_dequant_bad_arguments():
    rng = _rng(3)
    pw = pack_int8_weight(_i8(rng, (5, 8)))
    a, ws = _i8(rng, (2, 8)), np.ones(5, np.float32)
    with pytest.raises(QuantError, match="int8 a takes a_zero_point 0"):
        G.gemm_dequant(a, 3, pw, 1.0, ws)
    with pytest.raises(QuantError, match=r"\[0, 255\]"):
        G.gemm_dequant(a.view(np.uint8), 300, pw, 1.0, ws)
    with pytest.raises(InputError, match="unknown activation"):
        G.gemm_dequant(a, 0, pw, 1.0, ws, act="swish")
    with pytest.raises(InputError, match="has K=7"):
        G.gemm_dequant(a[:, :7], 0, pw, 1.0, ws)
    with pytest.raises(InputError, match="row_scale"):
        G.gemm_dequant(a, 0, pw, np.ones(3), ws)
    with pytest.raises(InputError):
        G.gemm_dequant(a, 0, pw, 1.0, np.ones(4, np.float32))
    with pytest.raises(InputError, match="out must be"):
        G.gemm_dequant(a, 0, pw, 1.0, ws, out=np.empty((2, 5), np.float64))
    assert G.gemm_dequant(a[:0], 0, pw, np.ones(0), ws).shape == (0, 5)
    # a uint8 a is read in place by the quad kernel: an out that overlaps it is refused
    base = np.zeros(8 * 8 * 4, np.uint8)
    pq = pack_int8_weight(_i8(rng, (8, 16)), LAYOUTS[-1])
    with pytest.raises(InputError, match="overlap"):
        G.gemm_dequant(base[:128].reshape(8, 16), 0, pq, 1.0, np.ones(8, np.float32), out=base.view(np.float32).reshape(8, 8))
