"""Argument checks shared by the kernel wrappers (plain Python, no numba)."""

from __future__ import annotations

import numpy as np

from npbert.errors import InputError, QuantError

# integer output dtypes a quantizer may write, and their ranges
_INT_RANGES = {
    np.dtype(np.int8): (-128, 127),
    np.dtype(np.uint8): (0, 255),
    np.dtype(np.int16): (-32768, 32767),
    np.dtype(np.uint16): (0, 65535),
    np.dtype(np.int32): (-(2**31), 2**31 - 1),
}


def as_c(a: np.ndarray) -> np.ndarray:
    """C-contiguous and writable (a copy only when needed). Numba compiles one specialisation per
    layout and per read-only flag, so the wrappers hand their cores one kind of array only."""
    if a.flags.c_contiguous and a.flags.writeable:
        return a
    return np.array(a, order="C", copy=True)


def array(x, name: str, dtypes: tuple, ndim: int | None = None) -> np.ndarray:
    """x as an ndarray of one of dtypes (exactly; no silent casts) and rank ndim."""
    if not isinstance(x, np.ndarray):
        raise InputError(f"{name}: expected a numpy array, got {type(x).__name__}")
    if x.dtype not in dtypes:  # (a dtype equals its scalar type: no np.dtype() per call)
        want = " or ".join(np.dtype(d).name for d in dtypes)
        raise QuantError(f"{name}: dtype {x.dtype} is not accepted; pass {want} (quantize / cast first)")
    if ndim is not None and x.ndim != ndim:
        raise InputError(f"{name}: expected a {ndim}-D array, got shape {x.shape}")
    return x


def int_arg(v, name: str) -> int:
    """A Python int from an int-like scalar (rejects floats that are not integral)."""
    try:
        iv = int(v)
    except (TypeError, ValueError):
        raise QuantError(f"{name}: expected an integer, got {v!r}") from None
    if isinstance(v, (float, np.floating)) and iv != v:
        raise QuantError(f"{name}: expected an integer, got {v!r}")
    return iv


def out_range(out_dtype, qmin, qmax, allowed=None) -> tuple[np.dtype, int, int]:
    """Validate an integer output dtype and a clamp range [qmin, qmax] inside it."""
    dt = np.dtype(out_dtype)
    if dt not in _INT_RANGES or (allowed is not None and dt not in [np.dtype(a) for a in allowed]):
        names = [d.name for d in (_INT_RANGES if allowed is None else [np.dtype(a) for a in allowed])]
        raise QuantError(f"out_dtype {dt} not supported; pass one of {names}")
    lo, hi = _INT_RANGES[dt]
    qmin, qmax = int_arg(qmin, "qmin"), int_arg(qmax, "qmax")
    if not (lo <= qmin <= qmax <= hi):
        raise QuantError(f"[qmin, qmax] = [{qmin}, {qmax}] must satisfy {lo} <= qmin <= qmax <= {hi} for {dt}")
    return dt, qmin, qmax


def pos_scale(s, name: str) -> float:
    s = float(s)
    if not (np.isfinite(s) and s > 0):
        raise QuantError(f"{name} must be a finite positive number, got {s!r}")
    return s


def group_bounds(bounds, K: int, name: str = "group_bounds") -> np.ndarray:
    """int64 [G+1] with bounds[0] == 0, bounds[-1] == K, strictly increasing (no empty group)."""
    b = np.asarray(bounds)
    if b.ndim != 1 or b.size < 2 or not np.issubdtype(b.dtype, np.integer):
        raise InputError(f"{name}: pass an integer array [G+1] of column boundaries, got shape {b.shape} dtype {b.dtype}")
    b = b.astype(np.int64)
    if b[0] != 0 or b[-1] != K or np.any(np.diff(b) <= 0):
        raise InputError(f"{name}: must start at 0, end at K={K} and increase strictly; got {b.tolist()}")
    return b


def f32_vector(v, n: int, name: str) -> np.ndarray:
    """v as a C-contiguous float32 [n] (per-column scales, biases, LayerNorm parameters)."""
    v = np.ascontiguousarray(v, np.float32)
    if v.shape != (n,):
        raise InputError(f"{name} must have shape [{n}], got {v.shape}")
    return v


def out_array(out, shape: tuple, dtype, name: str, inputs: tuple = ()) -> np.ndarray:
    """The result array of a kernel: `out` when given (checked: a writeable C-contiguous array of
    exactly this shape and dtype, which the kernel overwrites), else a new one. Callers that run
    the same shapes again (a forward, layer after layer) pass buffers they keep: a fresh
    multi-megabyte array per call costs its page faults (measured: a MiniLM batch-8 forward took
    12,000 minor faults). `out` must not overlap any of `inputs` (the kernels read them while writing)."""
    if out is None:
        return np.empty(shape, dtype=dtype)
    if not (isinstance(out, np.ndarray) and out.dtype == dtype and out.shape == tuple(shape) and out.flags.c_contiguous
            and out.flags.writeable):
        raise InputError(f"{name}: out must be a writeable C-contiguous {np.dtype(dtype).name} array of shape {tuple(shape)}")
    if any(np.may_share_memory(out, x) for x in inputs):
        raise InputError(f"{name}: out must not overlap the inputs; pass a separate buffer")
    return out
