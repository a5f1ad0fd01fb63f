"""Range estimators: the only stateful objects of quantization.

Every estimator has ``update(x, mask=None)``, ``range() -> (lo, hi)``, ``reset()`` and ``qparams()``.

- x: float array [..., ] (e.g. activations [B, T, H]).
- mask: bool (or 0/1 integer) array marking VALID positions, broadcastable over the leading dims of
  x (mask [B, T] for x [B, T, H]; an attention_mask can be passed as is). Masked-out (padding)
  positions never enter a statistic; a batch with no valid position is ignored (no state change).
- axis=None: per-tensor statistics, lo/hi float32 of shape (). axis=k: per-channel statistics along
  x's axis k, lo/hi float32 [C] (PEG needs per-hidden-dim ranges). The channel axis must not be one
  of the masked dims (per-position statistics along a padded axis would mean nothing).

Internally every batch becomes a matrix of valid rows [n, C] (C = 1 per tensor).

Estimators (ESTIMATORS registry):
  current_minmax  min / max of the last non-empty batch.
  running_minmax  EMA: first batch initialises, then new = momentum * old + (1 - momentum) * batch
                  (momentum 0.9 on the OLD value; the PEG paper's code, range_estimators.py:79, has
                  a typo that weights the batch twice and never reads the old value).
  minmax          all-time min / max.
  mse             grid search over clipping ranges minimising the MSE of fake-quant over the data
                  seen, held in a bounded, deterministic (seeded) uniform reservoir of rows.
  percentile      percentiles of the data seen (same reservoir): (P_{100-p}, P_p) for asymmetric,
                  +-P_p(|x|) (clamped to the min-max range) for symmetric.
"""

from __future__ import annotations

import numpy as np

from npbert.errors import CalibrationError, InputError, QuantError
from npbert.quant.qparams import QParams, check_bits, qparams_from_range
from npbert.quant.quantizers import fake_quant

NO_DATA = "no data: call update() with at least one batch"


class RangeEstimator:
    """Base: validates and flattens batches to valid rows [n, C]; subclasses keep the statistic."""

    name = "base"

    def __init__(self, bits: int = 8, symmetric: bool = False, axis: int | None = None):
        self.bits = check_bits(bits)
        self.symmetric = bool(symmetric)
        if axis is not None and (isinstance(axis, bool) or not isinstance(axis, (int, np.integer))):
            raise QuantError(f"axis must be None or an int, got {axis!r}")
        self.axis = None if axis is None else int(axis)
        self.reset()

    # --- public --------------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget all data."""
        self._C = None            # channel count fixed by the first non-empty batch
        self._reset()

    def update(self, x, mask=None) -> None:
        rows = self._rows(x, mask)          # [n, C] float32, only valid positions
        if rows.shape[0] == 0:
            return                          # all masked: no state change
        if self._C is None:
            self._C = rows.shape[1]
        elif rows.shape[1] != self._C:
            raise InputError(f"{self.name}: batch has {rows.shape[1]} channels along axis {self.axis}, "
                             f"earlier batches had {self._C}")
        self._update(rows)

    def range(self) -> tuple[np.ndarray, np.ndarray]:
        """(lo, hi): float32, shape () per tensor or [C] per channel; lo <= hi."""
        if self._C is None:
            raise CalibrationError(f"{self.name}: {NO_DATA}")
        lo, hi = self._range()
        lo, hi = np.asarray(lo, dtype=np.float32), np.asarray(hi, dtype=np.float32)
        if self.axis is None:
            lo, hi = lo.reshape(()), hi.reshape(())
        return lo, hi

    def qparams(self, **kw) -> QParams:
        """QParams for the estimated range with this estimator's bits / symmetric / axis."""
        lo, hi = self.range()
        return qparams_from_range(lo, hi, self.bits, self.symmetric, axis=self.axis, **kw)

    def __repr__(self):
        return f"{type(self).__name__}(bits={self.bits}, symmetric={self.symmetric}, axis={self.axis})"

    # --- subclass hooks ------------------------------------------------------------------------
    def _reset(self) -> None:
        raise NotImplementedError

    def _update(self, rows: np.ndarray) -> None:
        raise NotImplementedError

    def _range(self):
        raise NotImplementedError

    # --- batch -> valid rows ------------------------------------------------------------------
    def _rows(self, x, mask) -> np.ndarray:
        """x [...] (+ mask over leading dims) -> valid rows [n, C] float32 (C = 1 per tensor)."""
        try:
            x = np.asarray(x, dtype=np.float32)
        except (TypeError, ValueError) as e:
            raise InputError(f"{self.name}: x must be a numeric array: {e}") from None
        if x.ndim == 0:
            x = x.reshape(1)
        ax = None
        if self.axis is not None:
            if not -x.ndim <= self.axis < x.ndim:
                raise InputError(f"{self.name}: axis {self.axis} out of range for x of shape {x.shape}")
            ax = self.axis % x.ndim
        if mask is None:
            valid = None
        else:
            m = np.asarray(mask)
            if m.dtype != bool:
                if not np.issubdtype(m.dtype, np.integer) or (m.size and (m.min() < 0 or m.max() > 1)):
                    raise InputError(f"{self.name}: mask must be bool or 0/1 integers, got {m.dtype}")
                m = m.astype(bool)
            if m.ndim > x.ndim:
                raise InputError(f"{self.name}: mask {m.shape} has more dims than x {x.shape}")
            if ax is not None and ax < m.ndim:
                raise InputError(f"{self.name}: the channel axis {self.axis} is masked by a mask of shape "
                                 f"{m.shape}; mask only the leading (batch/token) dims")
            m = m.reshape(m.shape + (1,) * (x.ndim - m.ndim))
            try:
                valid = np.broadcast_to(m, x.shape)
            except ValueError:
                raise InputError(f"{self.name}: mask {np.shape(mask)} does not match the leading dims of "
                                 f"x {x.shape}") from None
        if ax is None:
            vals = x.reshape(-1) if valid is None else x[valid]
            rows = vals.reshape(-1, 1)
        else:
            xt = np.moveaxis(x, ax, -1)
            rows = xt.reshape(-1, xt.shape[-1])
            if valid is not None:   # constant along the channel axis (checked above)
                rows = rows[np.moveaxis(valid, ax, -1).reshape(rows.shape)[:, 0]]
        if not np.all(np.isfinite(rows)):
            raise InputError(f"{self.name}: x has non-finite values at valid positions")
        return rows


class CurrentMinMax(RangeEstimator):
    """min / max of the last non-empty batch."""

    name = "current_minmax"

    def _reset(self):
        self._lo = self._hi = None

    def _update(self, rows):
        self._lo, self._hi = rows.min(0), rows.max(0)

    def _range(self):
        return self._lo, self._hi


class MinMax(RangeEstimator):
    """All-time min / max."""

    name = "minmax"

    def _reset(self):
        self._lo = self._hi = None

    def _update(self, rows):
        lo, hi = rows.min(0), rows.max(0)
        if self._lo is None:
            self._lo, self._hi = lo, hi
        else:
            self._lo, self._hi = np.minimum(self._lo, lo), np.maximum(self._hi, hi)

    def _range(self):
        return self._lo, self._hi


class RunningMinMax(RangeEstimator):
    """EMA of batch min / max: new = momentum * old + (1 - momentum) * batch; first batch initialises.

    Kept in float64 and clipped to [min(old, batch), max(old, batch)], where the exact value lies
    (rounding may push 0.9*a + 0.1*a one ulp away from a).
    """

    name = "running_minmax"

    def __init__(self, bits=8, symmetric=False, axis=None, momentum: float = 0.9):
        if not 0.0 <= float(momentum) < 1.0:
            raise QuantError(f"momentum must be in [0, 1), got {momentum!r}")
        self.momentum = float(momentum)
        super().__init__(bits, symmetric, axis)

    def _reset(self):
        self._lo = self._hi = None

    def _update(self, rows):
        lo, hi = rows.min(0).astype(np.float64), rows.max(0).astype(np.float64)
        if self._lo is None:
            self._lo, self._hi = lo, hi
        else:
            self._lo = self._ema(self._lo, lo)
            self._hi = self._ema(self._hi, hi)

    def _ema(self, old, new):
        m = self.momentum
        v = m * old + (1.0 - m) * new
        # a convex combination may round one ulp past its end points (0.9*a + 0.1*a != a); clip back
        return np.clip(v, np.minimum(old, new), np.maximum(old, new))

    def _range(self):
        return self._lo, self._hi


class _Reservoir:
    """Bounded uniform sample of rows (Vitter's algorithm R) with a seeded generator: deterministic
    for a given seed and sequence of batches. Holds every row until `cap` rows have been seen."""

    def __init__(self, cap: int, seed: int):
        self.cap, self.seed = int(cap), int(seed)
        self.rng = np.random.default_rng(self.seed)
        self.buf = None       # [cap, C] float32
        self.n_seen = 0
        self.size = 0

    def add(self, rows: np.ndarray) -> None:
        n, C = rows.shape
        if self.buf is None:
            self.buf = np.empty((self.cap, C), dtype=np.float32)
        take = min(n, self.cap - self.size)           # fill phase: keep everything
        self.buf[self.size:self.size + take] = rows[:take]
        self.size += take
        self.n_seen += take
        rest = rows[take:]
        if len(rest):
            # row i (0-based over all rows) replaces slot j ~ U{0..i} when j < cap
            idx = self.rng.integers(0, self.n_seen + np.arange(len(rest)) + 1)
            keep = np.nonzero(idx < self.cap)[0]
            slots = idx[keep]
            # later rows win a shared slot, as in the sequential algorithm
            _, last = np.unique(slots[::-1], return_index=True)
            sel = keep[::-1][last]
            self.buf[idx[sel]] = rest[sel]
            self.n_seen += len(rest)

    @property
    def data(self) -> np.ndarray:
        return self.buf[: self.size]


class _SampleEstimator(RangeEstimator):
    """Keeps exact all-time min / max plus a reservoir of at most `max_samples` values
    (max(1, max_samples // C) rows of C channels)."""

    def __init__(self, bits=8, symmetric=False, axis=None, max_samples: int = 1 << 18, seed: int = 0):
        if int(max_samples) < 1:
            raise QuantError(f"max_samples must be >= 1, got {max_samples!r}")
        self.max_samples, self.seed = int(max_samples), int(seed)
        super().__init__(bits, symmetric, axis)

    def _reset(self):
        self._lo = self._hi = None
        self._res = None

    def _update(self, rows):
        lo, hi = rows.min(0), rows.max(0)
        if self._lo is None:
            self._lo, self._hi = lo, hi
            self._res = _Reservoir(max(1, self.max_samples // rows.shape[1]), self.seed)
        else:
            self._lo, self._hi = np.minimum(self._lo, lo), np.maximum(self._hi, hi)
        self._res.add(rows)


class MSE(_SampleEstimator):
    """Clipping range minimising mean((fake_quant(x) - x)^2) over the reservoir, per channel.

    Candidates (all inside the all-time [lo, hi], and alpha = 1 gives exactly [lo, hi]):
      symmetric:  a = alpha * max(|lo|, |hi|), range (max(lo, -a), min(hi, a))  (the symmetric grid
                  depends only on max(|.|) = a, and lo >= 0 data keeps its unsigned grid; a channel
                  whose values all exceed a in magnitude has no such sub-range and keeps (lo, hi));
      asymmetric: width w = alpha * (hi - lo), offset beta: range (lo + beta * (hi - lo - w), + w).
    alpha in linspace(1/n_grid, 1, n_grid), beta in linspace(0, 1, n_offsets). Ties keep the widest
    candidate. Cost: n_grid (* n_offsets) fake-quant passes over the reservoir per range() call.
    """

    name = "mse"

    def __init__(self, bits=8, symmetric=False, axis=None, n_grid: int = 100, n_offsets: int = 11,
                 max_samples: int = 1 << 18, seed: int = 0):
        if int(n_grid) < 1 or int(n_offsets) < 1:
            raise QuantError(f"n_grid and n_offsets must be >= 1, got {n_grid!r}, {n_offsets!r}")
        self.n_grid, self.n_offsets = int(n_grid), int(n_offsets)
        super().__init__(bits, symmetric, axis, max_samples, seed)

    def candidates(self):
        """Yield candidate (lo [C], hi [C]) float32 pairs, widest (the min-max range) first."""
        lo, hi = self._lo, self._hi
        alphas = np.linspace(1.0, 1.0 / self.n_grid, self.n_grid)   # descending: widest first
        if self.symmetric:
            absmax = np.maximum(np.abs(lo.astype(np.float64)), np.abs(hi.astype(np.float64)))
            for al in alphas:
                a = np.float32(al) * absmax if al != 1.0 else absmax
                clo, chi = np.maximum(lo, -a).astype(np.float32), np.minimum(hi, a).astype(np.float32)
                # a below every |value| of a one-signed channel has no sub-range of [lo, hi]:
                # fall back to (lo, hi) there, which never beats the first (min-max) candidate
                bad = clo > chi
                yield np.where(bad, lo, clo), np.where(bad, hi, chi)
        else:
            lo64, hi64 = lo.astype(np.float64), hi.astype(np.float64)
            betas = np.linspace(0.0, 1.0, self.n_offsets) if self.n_offsets > 1 else np.zeros(1)
            for al in alphas:
                w = al * (hi64 - lo64)
                for be in (betas if al != 1.0 else betas[:1]):
                    clo = lo64 + be * (hi64 - lo64 - w)
                    c = (np.clip(clo, lo64, hi64).astype(np.float32),
                         np.clip(clo + w, lo64, hi64).astype(np.float32))
                    yield (lo, hi) if al == 1.0 else c

    def mse_of(self, lo, hi) -> np.ndarray:
        """MSE [C] (float64) of fake-quant with the grid of (lo, hi) over the reservoir."""
        data = self._res.data                                   # [n, C]
        qp = qparams_from_range(lo, hi, self.bits, self.symmetric, axis=1)
        err = fake_quant(data, qp).astype(np.float64) - data
        return np.mean(err * err, axis=0)

    def _range(self):
        best_lo, best_hi = self._lo.copy(), self._hi.copy()
        best = None
        for lo, hi in self.candidates():
            m = self.mse_of(lo, hi)
            if best is None:
                best = m
                continue
            better = m < best                                   # strict: ties keep the wider range
            best = np.where(better, m, best)
            best_lo = np.where(better, lo, best_lo)
            best_hi = np.where(better, hi, best_hi)
        return best_lo, best_hi


class Percentile(_SampleEstimator):
    """Percentile range over the reservoir (np.percentile, method "linear").

    asymmetric: (P_{100-p}(x), P_p(x)); symmetric: a = P_p(|x|), (max(lo, -a), min(hi, a)).
    """

    name = "percentile"

    def __init__(self, bits=8, symmetric=False, axis=None, p: float = 99.99,
                 max_samples: int = 1 << 18, seed: int = 0):
        if not 50.0 <= float(p) <= 100.0:
            raise QuantError(f"p must be in [50, 100], got {p!r}")
        self.p = float(p)
        super().__init__(bits, symmetric, axis, max_samples, seed)

    def _range(self):
        data = self._res.data.astype(np.float64)
        if self.symmetric:
            a = np.percentile(np.abs(data), self.p, axis=0)
            lo, hi = np.maximum(self._lo, -a), np.minimum(self._hi, a)
        else:
            lo = np.percentile(data, 100.0 - self.p, axis=0)
            hi = np.percentile(data, self.p, axis=0)
        # interpolation stays within the sample, hence within the all-time min-max; clip is a guard
        return np.clip(lo, self._lo, self._hi), np.clip(hi, self._lo, self._hi)


ESTIMATORS = {
    "current_minmax": CurrentMinMax,
    "running_minmax": RunningMinMax,
    "minmax": MinMax,
    "mse": MSE,
    "percentile": Percentile,
}


def make_estimator(name: str, **kw) -> RangeEstimator:
    """ESTIMATORS[name](**kw); unknown name or keyword -> QuantError."""
    try:
        cls = ESTIMATORS[name]
    except (KeyError, TypeError):
        raise QuantError(f"unknown range estimator {name!r}; valid: {sorted(ESTIMATORS)}") from None
    try:
        return cls(**kw)
    except TypeError as e:
        raise QuantError(f"bad options for estimator {name!r}: {e}") from None
