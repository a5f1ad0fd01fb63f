"""Numba integer kernels: exact int GEMMs, (re)quantizers, TM-IQR selection; naive twins in reference.py.

Public API (other modules import these names):
    gemm:      PackedInt8Weight, pack_int8_weight, gemm_s8s8, gemm_u8s8, gemm_s16s8, gemm_grouped,
               bgemm_s8s8, bgemm_u8s8
    quantize:  quantize_dynamic, quantize_static, quantize_static_grouped, requantize, add_requant,
               add_requant_grouped
    selection: select_kth, quantile_linear, tmiqr_threshold
"""

import importlib

# Lazy re-exports (PEP 562): `import npbert.kernels.reference` must not pull in numba.
_HOME = {
    **dict.fromkeys(
        ["PackedInt8Weight", "pack_int8_weight", "gemm_s8s8", "gemm_u8s8", "gemm_s16s8", "gemm_grouped", "bgemm_s8s8", "bgemm_u8s8"],
        "gemm",
    ),
    **dict.fromkeys(["quantize_dynamic", "quantize_static", "quantize_static_grouped", "requantize", "add_requant",
                     "add_requant_grouped"], "quantize"),
    **dict.fromkeys(["select_kth", "quantile_linear", "tmiqr_threshold"], "selection"),
}


def __getattr__(name):
    mod = _HOME.get(name)
    if mod is None:
        raise AttributeError(f"module 'npbert.kernels' has no attribute {name!r}")
    return getattr(importlib.import_module(f"npbert.kernels.{mod}"), name)


__all__ = list(_HOME)
