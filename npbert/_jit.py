"""JIT policy in one place, so numerics are one decision.

- fastmath off: integer kernels must be bit-exact and float reductions reproducible; FMA contraction
  and reassociation would make results depend on the CPU and on the compiler's mood.
- cache on: the first call compiles (seconds); later processes load machine code from __pycache__,
  dropped as a whole when any source of the package changes (drop_stale_cache).
- nogil on: callers may run kernels from threads.
- error model "python" (numba's default) for the integer kernels: a division by zero raises. The
  float kernels (kernels/fused.py) take ieee=True, numba's "numpy" model (x / 0 = inf as in NumPy),
  because the per-element zero check of the python model keeps LLVM from vectorising any loop that
  divides by a per-element value (measured: GELU 8 ns -> 0.8 ns per element).
"""

import hashlib
import os
from pathlib import Path

import numba

CACHE = os.environ.get("NPBERT_JIT_CACHE", "1") != "0"
_STAMP = "npbert-sources.sha1"


def drop_stale_cache(pkg: Path) -> bool:
    """Delete the package's cached machine code when any of its sources changed since it was cached.

    numba keys a cached function on its own file's timestamp only, not on the functions it inlines
    from other files (fused.py inlines quantize.py's row kernels, gemm.py inlines _simd.py's micro-
    kernels): after an edit of one file the others would load stale code. One hash over every source
    of the package decides instead. Returns whether caches were dropped. Read-only installs (no
    writable __pycache__) are left alone: their sources do not change under them."""
    digest = hashlib.sha1()
    for f in sorted(pkg.rglob("*.py")):
        digest.update(str(f.relative_to(pkg)).encode() + b"\0" + f.read_bytes())
    stamp = pkg / "__pycache__" / _STAMP
    try:
        if stamp.read_text() == digest.hexdigest():
            return False
    except OSError:
        pass
    try:
        for cache_dir in pkg.rglob("__pycache__"):
            for f in [*cache_dir.glob("*.nbi"), *cache_dir.glob("*.nbc")]:
                f.unlink(missing_ok=True)
        stamp.parent.mkdir(exist_ok=True)
        stamp.write_text(digest.hexdigest())
    except OSError:
        return False
    return True


if CACHE:
    drop_stale_cache(Path(__file__).resolve().parent)

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
