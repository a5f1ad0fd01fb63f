"""Frozen quantization parameters and how to derive them from a float range.

Grid conventions (one decision for the whole engine):

- signed grids are *narrow* (restricted): [-(2^(b-1) - 1), 2^(b-1) - 1], always with zero point 0.
  -2^(b-1) is never produced, so negation stays in the grid, clipping is symmetric, and an int8
  operand never holds -128 (the value that makes int8 x int8 products overflow int16 pair sums).
- unsigned grids are full: [0, 2^b - 1], with an integer zero point inside the grid.
- storage dtype (``QParams.int_dtype``): signed -> int8 (b <= 8) / int16 (b <= 16);
  unsigned -> uint8 (b <= 8) / uint16 (b <= 16). Storage holds the grid exactly; arithmetic on
  stored codes must widen first (to int32/int64) before subtracting a zero point, exactly as for
  uint8. uint16 (not int32) keeps 16-bit activations at 2 bytes each.
- a scale is a *normal* positive float32 and every grid point dequantizes to a finite float32;
  with these two rules fake-quant is idempotent for every bit width up to 16 (see quantizers.py).

Granularity:

- tensor:  scale, zero_point have shape ();  axis is None.
- channel: shape [C], one entry per index along ``axis`` (per token = per channel along the token axis).
- group:   shape [G]; ``group_bounds`` [G+1] splits the ``axis`` positions of ``x.take(perm, axis)``
  into G contiguous groups (``perm`` None = identity). Group g covers permuted positions
  ``group_bounds[g]:group_bounds[g+1]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from npbert.errors import QuantError

MIN_BITS, MAX_BITS = 2, 16
# Smallest normal float32: a subnormal scale loses precision in (q - z) * scale and breaks idempotence.
SCALE_MIN = float(np.finfo(np.float32).tiny)


def grid_limits(bits: int, signed: bool) -> tuple[int, int]:
    """(qmin, qmax) of a b-bit grid: narrow signed [-(2^(b-1)-1), 2^(b-1)-1] or unsigned [0, 2^b-1]."""
    check_bits(bits)
    if signed:
        m = (1 << (bits - 1)) - 1
        return -m, m
    return 0, (1 << bits) - 1


def check_bits(bits) -> int:
    """bits must be a Python/NumPy integer in 2..16; returns it as int or raises QuantError."""
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not MIN_BITS <= bits <= MAX_BITS:
        raise QuantError(f"bits must be in {MIN_BITS}..{MAX_BITS}, got {bits!r}")
    return int(bits)


def _frozen(a: np.ndarray) -> np.ndarray:
    a = np.array(a, copy=True)
    a.setflags(write=False)
    return a


@dataclass(frozen=True, eq=False)
class QParams:
    """Affine quantization parameters: x ~ (q - zero_point) * scale, q in [qmin, qmax].

    scale:        float32, shape () per tensor, [C] per channel, [G] per group.
    zero_point:   int32, same shape as scale.
    bits:         2..16.
    signed:       narrow signed grid (zero point 0 when made by qparams_from_range) or unsigned grid.
    axis:         channel axis (per channel) or the axis the groups split (per group); None per tensor.
    group_bounds: int64 [G+1], 0 = b_0 < b_1 < ... < b_G = C: contiguous groups of the permuted axis.
    perm:         int64 [C], the permutation applied along axis before grouping; None = identity.

    Arrays are copied and made read-only, so a QParams can be shared freely.
    """

    scale: np.ndarray
    zero_point: np.ndarray
    bits: int
    signed: bool
    axis: int | None = None
    group_bounds: np.ndarray | None = None
    perm: np.ndarray | None = None

    def __post_init__(self):
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 (frozen dataclass)
        set_("bits", check_bits(self.bits))
        set_("signed", bool(self.signed))
        try:
            scale = np.asarray(self.scale, dtype=np.float64)
            zp = np.asarray(self.zero_point)
        except (TypeError, ValueError) as e:
            raise QuantError(f"scale and zero_point must be numeric arrays: {e}") from None
        if scale.ndim > 1:
            raise QuantError(f"scale must have shape () or [C], got {scale.shape}")
        if zp.shape != scale.shape:
            raise QuantError(f"zero_point shape {zp.shape} must equal scale shape {scale.shape}")
        if zp.size and not (np.issubdtype(zp.dtype, np.integer) or np.all(zp == np.rint(zp))):
            raise QuantError("zero_point must hold integers")
        if not np.all(np.isfinite(scale)) or np.any(scale <= 0):
            raise QuantError(f"scale must be finite and > 0, got {scale.ravel()[:8].tolist()}")
        scale32 = scale.astype(np.float32)
        if np.any(scale32 < SCALE_MIN) or not np.all(np.isfinite(scale32)):
            raise QuantError(f"scale must be a normal float32 in [{SCALE_MIN:.3g}, 3.4e38]; "
                             f"got {scale.ravel()[:8].tolist()}")
        qmin, qmax = grid_limits(self.bits, self.signed)
        if zp.size and (np.min(zp) < qmin or np.max(zp) > qmax):
            raise QuantError(f"zero_point must lie in [{qmin}, {qmax}] for bits={self.bits} "
                             f"signed={self.signed}, got {zp.ravel()[:8].tolist()}")
        zp32 = zp.astype(np.int32)
        # Every grid point must dequantize to a finite float32 (a range near float32 max would not).
        with np.errstate(over="ignore"):
            ends = np.stack([(np.float32(qmin) - zp32.astype(np.float32)) * scale32,
                             (np.float32(qmax) - zp32.astype(np.float32)) * scale32])
        if not np.all(np.isfinite(ends)):
            raise QuantError("grid end points overflow float32: the range is too wide to quantize")
        set_("scale", _frozen(scale32))
        set_("zero_point", _frozen(zp32))

        if scale.ndim == 0:
            if self.axis is not None or self.group_bounds is not None or self.perm is not None:
                raise QuantError("per-tensor QParams (scalar scale) take no axis, group_bounds or perm")
            return
        if self.axis is None or isinstance(self.axis, bool) or not isinstance(self.axis, (int, np.integer)):
            raise QuantError(f"per-channel/per-group QParams need an integer axis, got {self.axis!r}")
        set_("axis", int(self.axis))
        if self.group_bounds is None:
            if self.perm is not None:
                raise QuantError("perm is only meaningful with group_bounds (per-channel scales can "
                                 "simply be reordered)")
            return
        gb = np.asarray(self.group_bounds)
        if gb.ndim != 1 or gb.size != scale.size + 1 or not np.issubdtype(gb.dtype, np.integer):
            raise QuantError(f"group_bounds must be int [G+1] = [{scale.size + 1}], got {gb.dtype} {gb.shape}")
        if gb[0] != 0 or np.any(np.diff(gb) <= 0):
            raise QuantError(f"group_bounds must start at 0 and strictly increase, got {gb.tolist()}")
        set_("group_bounds", _frozen(gb.astype(np.int64)))
        if self.perm is not None:
            p = np.asarray(self.perm)
            C = int(gb[-1])
            if (p.shape != (C,) or not np.issubdtype(p.dtype, np.integer)
                    or not np.array_equal(np.sort(p), np.arange(C))):
                raise QuantError(f"perm must be a permutation of range({C}) (C = group_bounds[-1])")
            set_("perm", _frozen(p.astype(np.int64)))

    # --- derived ---------------------------------------------------------------------------------
    @property
    def qmin(self) -> int:
        return grid_limits(self.bits, self.signed)[0]

    @property
    def qmax(self) -> int:
        return grid_limits(self.bits, self.signed)[1]

    @property
    def granularity(self) -> str:
        if self.scale.ndim == 0:
            return "tensor"
        return "channel" if self.group_bounds is None else "group"

    @property
    def int_dtype(self) -> np.dtype:
        if self.signed:
            return np.dtype(np.int8 if self.bits <= 8 else np.int16)
        return np.dtype(np.uint8 if self.bits <= 8 else np.uint16)

    @property
    def n_channels(self) -> int | None:
        """Length of the quantized axis (None per tensor)."""
        if self.scale.ndim == 0:
            return None
        return self.scale.size if self.group_bounds is None else int(self.group_bounds[-1])

    def per_channel(self) -> tuple[np.ndarray, np.ndarray]:
        """Expand to per-position (scale [C], zero_point [C]) in the ORIGINAL order of the axis.

        Per group: position perm[j] sits at permuted position j, which lies in group
        searchsorted(bounds, j, 'right') - 1; so gid[perm] = gid_permuted. Per tensor: shapes ().
        """
        if self.group_bounds is None:
            return self.scale, self.zero_point
        sizes = np.diff(self.group_bounds)
        gid_perm = np.repeat(np.arange(sizes.size), sizes)           # [C], group of permuted position j
        gid = np.empty_like(gid_perm)
        if self.perm is None:
            gid = gid_perm
        else:
            gid[self.perm] = gid_perm                                  # group of original position
        return self.scale[gid], self.zero_point[gid]

    # --- equality / serialisation ---------------------------------------------------------------
    def _key(self):
        arr = lambda a: None if a is None else (a.shape, a.tobytes())  # noqa: E731
        return (arr(self.scale), arr(self.zero_point), self.bits, self.signed, self.axis,
                arr(self.group_bounds), arr(self.perm))

    def __eq__(self, other):
        return isinstance(other, QParams) and self._key() == other._key()

    def __hash__(self):
        return hash(self._key())

    def to_dict(self) -> dict:
        """JSON-serialisable dict; float32 scales survive the round trip exactly (float32 -> repr(float64))."""
        lst = lambda a: None if a is None else a.tolist()  # noqa: E731
        return {"scale": self.scale.astype(np.float64).tolist(), "zero_point": self.zero_point.tolist(),
                "bits": self.bits, "signed": self.signed, "axis": self.axis,
                "group_bounds": lst(self.group_bounds), "perm": lst(self.perm)}

    @classmethod
    def from_dict(cls, d: dict) -> "QParams":
        try:
            opt = lambda k: None if d.get(k) is None else np.asarray(d[k], dtype=np.int64)  # noqa: E731
            return cls(scale=np.asarray(d["scale"], dtype=np.float32),
                       zero_point=np.asarray(d["zero_point"], dtype=np.int32),
                       bits=d["bits"], signed=d["signed"], axis=d.get("axis"),
                       group_bounds=opt("group_bounds"), perm=opt("perm"))
        except (KeyError, TypeError, ValueError) as e:
            raise QuantError(f"malformed QParams dict ({type(e).__name__}: {e}); expected keys "
                             "scale, zero_point, bits, signed[, axis, group_bounds, perm]") from None

    def __repr__(self):
        s = f"QParams({self.granularity}, bits={self.bits}, signed={self.signed}"
        if self.scale.ndim == 0:
            return s + f", scale={float(self.scale):.6g}, zero_point={int(self.zero_point)})"
        return s + f", axis={self.axis}, n={self.scale.size}, perm={'no' if self.perm is None else 'yes'})"


def qparams_from_range(lo, hi, bits: int, symmetric: bool, signed: bool | None = None, axis=None,
                       group_bounds=None, perm=None) -> QParams:
    """QParams whose grid covers [lo, hi]. lo, hi: scalars, or [C] / [G] arrays (with axis).

    Symmetric (zero point 0):
      - lo >= 0 everywhere and signed is None/False -> unsigned grid [0, 2^b-1];
      - otherwise narrow signed grid [-(2^(b-1)-1), 2^(b-1)-1]  (signed=False with lo < 0 -> QuantError).
      scale = max(|lo|, |hi|) / qmax.
    Asymmetric (unsigned grid [0, 2^b-1]; signed=True -> QuantError):
      lo = min(lo, 0), hi = max(hi, 0)   (0.0 must be exactly representable: padding, ReLU/GELU zeros)
      scale = (hi - lo) / (2^b - 1)
      zero_point = clamp(rint(-lo / scale), 0, 2^b-1)   (rint = half to even, on the float32 scale)

    Arithmetic is float64, then the scale is rounded once to float32 (and floored at the smallest
    normal float32). A zero-width range (all data 0) gets scale 1.0: any scale represents it exactly,
    and 1.0 is a power of two, so dequantize stays exact and later requantization multipliers finite.
    """
    bits = check_bits(bits)
    try:
        lo = np.asarray(lo, dtype=np.float64)
        hi = np.asarray(hi, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise QuantError(f"lo/hi must be numeric: {e}") from None
    if lo.shape != hi.shape:
        raise QuantError(f"lo shape {lo.shape} != hi shape {hi.shape}")
    if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))):
        raise QuantError("lo/hi must be finite (calibrate on finite data)")
    if np.any(lo > hi):
        raise QuantError("lo must be <= hi for every channel/group")
    if symmetric:
        if signed is None:
            signed = not bool(np.all(lo >= 0))
        elif not signed and np.any(lo < 0):
            raise QuantError("signed=False with a negative lo: use the signed grid or asymmetric")
        qmin, qmax = grid_limits(bits, signed)
        absmax = np.maximum(np.abs(lo), np.abs(hi))
        scale = _finish_scale(absmax / qmax, absmax == 0)
        zp = np.zeros(lo.shape, dtype=np.int32)
    else:
        if signed:
            raise QuantError("asymmetric quantization uses the unsigned grid [0, 2^b-1]; pass signed=None/False")
        signed = False
        qmin, qmax = grid_limits(bits, False)
        lo, hi = np.minimum(lo, 0.0), np.maximum(hi, 0.0)
        scale = _finish_scale((hi - lo) / qmax, hi == lo)
        zp = np.clip(np.rint(-lo / scale.astype(np.float64)), qmin, qmax).astype(np.int32)
    return QParams(scale=scale, zero_point=zp, bits=bits, signed=signed, axis=axis,
                   group_bounds=group_bounds, perm=perm)


def _finish_scale(scale64: np.ndarray, zero_width: np.ndarray) -> np.ndarray:
    scale = np.where(zero_width, 1.0, np.maximum(scale64, SCALE_MIN)).astype(np.float32)
    return np.maximum(scale, np.float32(SCALE_MIN))  # the cast may round a tiny scale below the floor
