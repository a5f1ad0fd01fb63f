"""JIT policy in one place, so numerics are one decision.

- fastmath off: integer kernels must be bit-exact and float reductions reproducible; FMA contraction
  and reassociation would make results depend on the CPU and on the compiler's mood.
- cache on: the first call compiles (seconds); later processes load machine code from __pycache__.
- nogil on: callers may run kernels from threads.
"""

import os

import numba

CACHE = os.environ.get("NPBERT_JIT_CACHE", "1") != "0"

njit = numba.njit(cache=CACHE, fastmath=False, nogil=True)
pnjit = numba.njit(cache=CACHE, fastmath=False, nogil=True, parallel=True)


def jit(fn=None, *, parallel: bool = False):
    """Decorator: @jit or @jit(parallel=True)."""
    deco = pnjit if parallel else njit
    return deco if fn is None else deco(fn)


def set_num_threads(n: int | None) -> int:
    """Honour a thread count for numba's parallel loops; returns the count in force."""
    if n is not None:
        n = max(1, min(int(n), numba.config.NUMBA_NUM_THREADS))
        numba.set_num_threads(n)
    return numba.get_num_threads()
