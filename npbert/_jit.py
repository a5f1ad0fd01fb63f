"""JIT policy in one place, so numerics are one decision.

- fastmath off: integer kernels must be bit-exact and float reductions reproducible; FMA contraction
  and reassociation would make results depend on the CPU and on the compiler's mood.
- cache on: the first call compiles (seconds); later processes load machine code from __pycache__.
- nogil on: callers may run kernels from threads.
- error model "python" (numba's default) for the integer kernels: a division by zero raises. The
  float kernels (kernels/fused.py) take ieee=True, numba's "numpy" model (x / 0 = inf as in NumPy),
  because the per-element zero check of the python model keeps LLVM from vectorising any loop that
  divides by a per-element value (measured: GELU 8 ns -> 0.8 ns per element).
"""

import os

import numba

CACHE = os.environ.get("NPBERT_JIT_CACHE", "1") != "0"

njit = numba.njit(cache=CACHE, fastmath=False, nogil=True)
pnjit = numba.njit(cache=CACHE, fastmath=False, nogil=True, parallel=True)
njit_ieee = numba.njit(cache=CACHE, fastmath=False, nogil=True, error_model="numpy")
pnjit_ieee = numba.njit(cache=CACHE, fastmath=False, nogil=True, parallel=True, error_model="numpy")


def jit(fn=None, *, parallel: bool = False, ieee: bool = False):
    """Decorator: @jit, @jit(parallel=True), @jit(ieee=True) (numpy error model, see above)."""
    deco = (pnjit_ieee if parallel else njit_ieee) if ieee else (pnjit if parallel else njit)
    return deco if fn is None else deco(fn)


def set_num_threads(n: int | None) -> int:
    """Honour a thread count for numba's parallel loops; returns the count in force."""
    if n is not None:
        n = max(1, min(int(n), numba.config.NUMBA_NUM_THREADS))
        numba.set_num_threads(n)
    return numba.get_num_threads()
