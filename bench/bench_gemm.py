"""GOP/s of npbert's exact integer GEMMs on BERT shapes, next to NumPy float32 matmul, ONNX Runtime's
MatMulInteger and torch's int8 dynamic linear, all in one run with one thread count.

    flock /tmp/npbert-heavy.lock python bench/bench_gemm.py [--threads 2] [--repeats 7]

GOP/s = 2*M*N*K / median seconds; the kernels of one shape are sampled in rotation (bench/_util.py:
time_round_robin) so that bursts from other processes on this shared machine hit all of them. Every kernel is timed only after its output was checked against
the int64 reference (kernels/reference.py); peers that are not exact on full-range data are reported
as such (with the data range on which they are exact) rather than silently compared. Each shape's
rotation also samples the micro-kernel alone on L1-resident operands ("ceil"): the most this
kernel's instruction stream does on this machine at that moment, the yardstick for "% of peak".
Writes bench/results/gemm.json (command, machine, versions, threads, date, every measurement).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import _util  # noqa: E402

THREADS = _util.threads_from_argv(2)
_util.set_threads_env(THREADS)  # before numpy / numba / torch load

import argparse  # noqa: E402

import numpy as np  # noqa: E402

from numba import prange  # noqa: E402

from npbert._jit import jit, set_num_threads  # noqa: E402
from npbert.kernels import reference as R  # noqa: E402
from npbert.kernels._simd import HAVE_U8S7, MR, NR, microkernel, microkernel_u8s7  # noqa: E402
from npbert.kernels.gemm import gemm_s8s8, gemm_s16s8, gemm_u8s8, pack_int8_weight  # noqa: E402

MS = (128, 1024)
KN = ((384, 1536), (1536, 384), (768, 3072), (3072, 768))
U8_ZP = 128
CEILING = "micro-kernel ceiling (L1)"
CEILING_U8S7 = "micro-kernel ceiling, uint8 x int7 (L1)"
F32_EXACT = 2**24  # float32 holds every integer below this exactly


# -------------------------------------------------------------------------------------------- ceiling


@jit(parallel=True)
def _ceiling_loop(a16, lda, wp, npairs, tiles, reps):
    """Each thread runs the GEMM micro-kernel `reps` times on L1-resident operands: no memory
    traffic, no packing, no edges -- the most this kernel's instruction stream can do here."""
    for t in prange(tiles.shape[0]):
        for _ in range(reps):
            microkernel(a16, 0, lda, wp, 0, npairs, tiles[t], 0, NR)


CEIL_PAIRS, CEIL_REPS = 128, 2000  # A 4 x 256 int16 (2 KiB) and W 256 x 16 int16 (16 KiB): in L1


def ceiling_fn(threads: int):
    """(callable, ops per call) of the micro-kernel ceiling loop on `threads` threads."""
    a16 = np.ones(MR * 2 * CEIL_PAIRS, np.int16)
    wp = np.ones(2 * NR * CEIL_PAIRS, np.int16)
    tiles = np.empty((threads, MR * NR), np.int32)
    ops = threads * CEIL_REPS * CEIL_PAIRS * MR * NR * 2 * 2
    return (lambda: _ceiling_loop(a16, 2 * CEIL_PAIRS, wp, CEIL_PAIRS, tiles, CEIL_REPS)), ops


@jit(parallel=True)
def _ceiling_u8s7_loop(a8, lda, wq, nquads, corr, tiles, reps):
    """_ceiling_loop for the uint8 x int7 (vpmaddubsw) micro-kernel."""
    for t in prange(tiles.shape[0]):
        for _ in range(reps):
            microkernel_u8s7(a8, 0, lda, wq, 0, nquads, corr, 0, tiles[t], 0, NR)


def ceiling_u8s7_fn(threads: int):
    """(callable, ops per call) of the u8 x s7 micro-kernel on L1-resident operands (same k as ceiling_fn)."""
    nq = CEIL_PAIRS // 2
    a8 = np.ones(MR * 4 * nq, np.uint8)
    wq = np.ones(4 * NR * nq, np.int8)
    corr = np.zeros(NR, np.int32)
    tiles = np.empty((threads, MR * NR), np.int32)
    ops = threads * CEIL_REPS * nq * MR * NR * 4 * 2
    return (lambda: _ceiling_u8s7_loop(a8, 4 * nq, wq, nq, corr, tiles, CEIL_REPS)), ops


# ---------------------------------------------------------------------------------------------- peers


def make_ort(w: np.ndarray, a_dtype, a_zp: int | None, threads: int):
    """ORT session computing MatMulInteger(A, B=w.T constant[, a_zero_point]) -> int32 [M, N]."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    M_sym, (N, K) = "M", w.shape
    elem = TensorProto.INT8 if a_dtype == np.int8 else TensorProto.UINT8
    inits = [numpy_helper.from_array(np.ascontiguousarray(w.T), "B")]  # [K, N] int8, constant: ORT prepacks
    inputs = ["A", "B"]
    if a_zp is not None:
        inits.append(numpy_helper.from_array(np.array(a_zp, dtype=a_dtype), "a_zp"))
        inputs.append("a_zp")
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", inputs, ["Y"])],
        "matmulinteger",
        [helper.make_tensor_value_info("A", elem, [M_sym, K])],
        [helper.make_tensor_value_info("Y", TensorProto.INT32, [M_sym, N])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return lambda a: sess.run(None, {"A": a})[0]


def make_torch_dynamic(w: np.ndarray, w_scale: float):
    """torch.ops.quantized.linear_dynamic over a prepacked per-tensor qint8 weight (scale w_scale, zp 0).
    Float in, float out; fbgemm quantizes the input per tensor to 7-bit uint8 (reduce_range=True)."""
    import torch

    qw = torch._make_per_tensor_quantized_tensor(torch.from_numpy(np.ascontiguousarray(w)), w_scale, 0)
    packed = torch.ops.quantized.linear_prepack(qw, None)

    def run(x_t):
        return torch.ops.quantized.linear_dynamic(x_t, packed, True)

    return run


# ----------------------------------------------------------------------------------------------- main


def check(name, got, ref, results_ok: dict):
    ok = got.shape == ref.shape and np.array_equal(got, ref)
    results_ok[name] = bool(ok)
    if not ok:
        diff = np.abs(got.astype(np.int64) - ref.astype(np.int64))
        print(f"   {name}: MISMATCH ({np.count_nonzero(diff)} of {diff.size} differ, max |diff| {diff.max()})")
    return ok


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2, help="threads for every library (default 2)")
    ap.add_argument("--repeats", type=int, default=11, help="timed samples per kernel, taken in rotation (median reported)")
    ap.add_argument("--out", default=str(_util.RESULTS / "gemm.json"))
    ap.add_argument("--no-peers", action="store_true", help="skip ONNX Runtime and torch")
    ap.add_argument("--quick", action="store_true", help="M=128 shapes only")
    args = ap.parse_args()
    threads = set_num_threads(args.threads)

    ort_ok = torch_ok = False
    if not args.no_peers:
        try:
            import onnx  # noqa: F401
            import onnxruntime  # noqa: F401

            ort_ok = True
        except ImportError:
            print("onnxruntime/onnx not installed: ORT columns skipped")
        try:
            import torch

            torch.set_num_threads(threads)
            torch_ok = True
        except ImportError:
            print("torch not installed: torch column skipped")

    print(f"threads={threads} repeats={args.repeats}")
    ceil_call, ceil_ops = ceiling_fn(threads)
    ceil7_call, ceil7_ops = ceiling_u8s7_fn(threads)
    rng = np.random.default_rng(0)
    rows, all_ok, inexact_notes = [], True, {}
    for M in (MS[:1] if args.quick else MS):
        for K, N in KN:
            shape = {"M": M, "K": K, "N": N}
            ops = 2.0 * M * N * K
            w = rng.integers(-128, 128, (N, K), dtype=np.int8)
            a8 = rng.integers(-128, 128, (M, K), dtype=np.int8)
            au = rng.integers(0, 256, (M, K), dtype=np.uint8)
            a16 = rng.integers(-32768, 32768, (M, K), dtype=np.int16)
            pw = pack_int8_weight(w)
            t0 = time.perf_counter()
            ref8 = R.gemm_s8s8_ref(a8, w)
            refu = R.gemm_u8s8_ref(au, U8_ZP, w)
            ref16 = R.gemm_s16s8_ref(a16, w)
            t_ref = time.perf_counter() - t0

            oks: dict = {}
            fns = {}
            check("npbert gemm_s8s8", gemm_s8s8(a8, pw), ref8, oks)
            fns["npbert gemm_s8s8"] = lambda: gemm_s8s8(a8, pw)
            check("npbert gemm_u8s8", gemm_u8s8(au, U8_ZP, pw), refu, oks)
            fns["npbert gemm_u8s8"] = lambda: gemm_u8s8(au, U8_ZP, pw)
            check("npbert gemm_s16s8", gemm_s16s8(a16, pw), ref16, oks)
            fns["npbert gemm_s16s8"] = lambda: gemm_s16s8(a16, pw)
            if HAVE_U8S7:
                # 7-bit weights (recipe option wbits=7): quad panels and the uint8 x int7 vpmaddubsw
                # kernel, exact because no int16 pair sum can saturate (kernels/_simd.py)
                w7 = (w >> 1).astype(np.int8)  # [-64, 63]
                pw7 = pack_int8_weight(w7)
                check("npbert gemm_s8s8, 7-bit weights", gemm_s8s8(a8, pw7), R.gemm_s8s8_ref(a8, w7), oks)
                fns["npbert gemm_s8s8, 7-bit weights"] = lambda: gemm_s8s8(a8, pw7)
                check("npbert gemm_u8s8, 7-bit weights", gemm_u8s8(au, U8_ZP, pw7), R.gemm_u8s8_ref(au, U8_ZP, w7), oks)
                fns["npbert gemm_u8s8, 7-bit weights"] = lambda: gemm_u8s8(au, U8_ZP, pw7)

            # NumPy float32 on the same integer values: exact while every partial sum is < 2^24
            af, wfT = a8.astype(np.float32), w.astype(np.float32).T
            yf = af @ wfT
            oks["numpy f32 matmul"] = bool(np.array_equal(yf, ref8.astype(np.float32)) and np.abs(ref8).max() < F32_EXACT)
            fns["numpy f32 matmul"] = lambda: af @ wfT

            if ort_ok:
                ort8 = make_ort(w, np.int8, None, threads)
                check("ORT MatMulInteger s8s8", ort8(a8), ref8, oks)
                fns["ORT MatMulInteger s8s8"] = lambda: ort8(a8)
                ortu = make_ort(w, np.uint8, U8_ZP, threads)
                yu = ortu(au)
                if not np.array_equal(yu, refu):
                    # MLAS' AVX2 u8s8 kernel adds u8*s8 pairs with vpmaddubsw, which saturates at
                    # int16; exact only when |pair sum| <= 32767, e.g. 7-bit activations (a <= 127).
                    d = np.abs(yu.astype(np.int64) - refu)
                    a7 = (au >> 1).astype(np.uint8)
                    ok7 = np.array_equal(ortu(a7), R.gemm_u8s8_ref(a7, U8_ZP, w))
                    inexact_notes[f"ORT MatMulInteger u8s8 @ {M}x{K}x{N}"] = (
                        f"{np.count_nonzero(d)}/{d.size} outputs differ on full-range uint8 (max |diff| {d.max()}); "
                        f"exact on 7-bit activations: {ok7}"
                    )
                    oks["ORT MatMulInteger u8s8"] = "inexact on full range" if ok7 else False
                else:
                    oks["ORT MatMulInteger u8s8"] = True
                fns["ORT MatMulInteger u8s8"] = lambda: ortu(au)

            if torch_ok:
                import torch

                # inputs that fbgemm's dynamic per-tensor quantization maps exactly onto known 7-bit
                # codes: x = (a7 - 64) * 2^-4 with a7 spanning [0, 127] gives scale 2^-4, zero point 64
                a7 = rng.integers(0, 128, (M, K), dtype=np.uint8)
                a7[0, 0], a7[0, 1] = 0, 127
                s_a, s_w = 2.0**-4, 2.0**-7
                x_t = torch.from_numpy((a7.astype(np.float32) - 64) * np.float32(s_a))
                lin = make_torch_dynamic(w, s_w)
                y = lin(x_t).numpy().astype(np.float64) / (s_a * s_w)
                ref7 = R.gemm_u8s8_ref(a7, 64, w).astype(np.int64)
                exact_repr = np.abs(ref7).max() < F32_EXACT  # float32 output holds the int exactly
                oks["torch dynamic linear"] = bool(exact_repr and np.array_equal(y, ref7))
                fns["torch dynamic linear"] = lambda: lin(x_t)

            bad = [k for k, v in oks.items() if v is False]
            all_ok &= not bad
            print(f"M={M} K={K} N={N}: checks {'pass' if not bad else 'FAIL ' + str(bad)} (reference {t_ref:.1f} s)", flush=True)
            # the micro-kernel on L1-resident operands, sampled in the same rotation: this shape's ceiling
            fns[CEILING] = ceil_call
            if HAVE_U8S7:
                fns[CEILING_U8S7] = ceil7_call
            la = _util.loadavg()
            timings = _util.time_round_robin(fns, repeats=args.repeats)
            noisy = {k: (t["retaken_samples"], t["contaminated_samples_kept"]) for k, t in timings.items() if t["retaken_samples"]}
            if noisy:
                print(f"   samples retaken because other processes used the CPU (retaken, kept anyway): {noisy}")
            for name, t in timings.items():
                n_ops = {CEILING: ceil_ops, CEILING_U8S7: ceil7_ops}.get(name, ops)
                rows.append({**shape, "kernel": name, "exact": oks.get(name), **t, "gops": n_ops / t["median_s"] / 1e9, "loadavg_before": la})

    print("all results match" if all_ok else "SOME RESULTS DO NOT MATCH (see above)")
    for k, v in inexact_notes.items():
        print(f"note: {k}: {v}")
    table = print_table(rows)
    payload = {
        "machine": _util.machine_info(),
        "versions": _util.versions("onnxruntime", "onnx", "torch"),
        "threads": threads,
        "repeats": args.repeats,
        "all_results_match": all_ok,
        "notes": inexact_notes,
        "results": rows,
        "table": table,
    }
    path = _util.write_json(args.out, payload)
    print(f"wrote {path}")


COLS = [
    ("npbert gemm_s8s8", "s8s8"),
    ("npbert gemm_u8s8", "u8s8"),
    ("npbert gemm_s16s8", "s16s8"),
    ("npbert gemm_s8s8, 7-bit weights", "s8s7"),
    ("ORT MatMulInteger s8s8", "ORT s8s8"),
    ("ORT MatMulInteger u8s8", "ORT u8s8*"),
    ("torch dynamic linear", "torch dyn"),
    ("numpy f32 matmul", "np f32"),
    (CEILING, "ceil"),
    (CEILING_U8S7, "ceil s7"),
]


def print_table(rows) -> list[str]:
    shapes = sorted({(r["M"], r["K"], r["N"]) for r in rows}, key=lambda s: (s[0], s[1] * s[2], s[1]))
    g = {(r["M"], r["K"], r["N"], r["kernel"]): r["gops"] for r in rows}
    cols = [c for c in COLS if any(k == c[0] for *_, k in g)]
    head = f"{'M':>5} {'K':>5} {'N':>5} | " + " ".join(f"{c[1]:>9}" for c in cols)
    head += " | s8s8/ORTs8 s8s8/ORTu8 u8s8/ORTu8 s8s7/ORTu8 s8s8/npf32 s8s8/ceil"
    lines = ["GOP/s (2*M*N*K / median s); ceil = the micro-kernel on L1-resident operands, same rotation", head, "-" * len(head)]
    for M, K, N in shapes:
        vals = [g.get((M, K, N, c[0])) for c in cols]
        line = f"{M:>5} {K:>5} {N:>5} | " + " ".join(f"{v:9.1f}" if v else f"{'-':>9}" for v in vals)

        def ratio(x, y):
            a, b = g.get((M, K, N, x)), g.get((M, K, N, y))
            return f"{a / b:10.2f}x" if a and b else f"{'-':>11}"

        line += " | " + " ".join(
            [
                ratio("npbert gemm_s8s8", "ORT MatMulInteger s8s8"),
                ratio("npbert gemm_s8s8", "ORT MatMulInteger u8s8"),
                ratio("npbert gemm_u8s8", "ORT MatMulInteger u8s8"),
                ratio("npbert gemm_s8s8, 7-bit weights", "ORT MatMulInteger u8s8"),
                ratio("npbert gemm_s8s8", "numpy f32 matmul"),
                f"{100 * g.get((M, K, N, 'npbert gemm_s8s8'), 0) / g[(M, K, N, CEILING)]:9.0f} %",
            ]
        )
        lines.append(line)
    lines.append("* ORT u8s8 (MLAS AVX2: vpmaddubsw, int16 pair sums saturate) is not exact on full-range uint8, see notes")
    print("\n".join(lines))
    return lines


if __name__ == "__main__":
    main()
