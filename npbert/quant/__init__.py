"""Quantization core: QParams, pure quantizers, range estimators, TM-IQR reference, PEG helpers.

Pure NumPy; the fused fast paths live in npbert/kernels and match these references bit for bit.
"""

from npbert.quant.estimators import ESTIMATORS, RangeEstimator, make_estimator
from npbert.quant.peg import (inverse_permutation, peg_qparams, permute_linear_in, permute_linear_out,
                              permute_vector, range_permutation)
from npbert.quant.qparams import QParams, grid_limits, qparams_from_range
from npbert.quant.quantizers import (QUANTIZERS, dequantize, fake_quant, get_quantizer, group_bounds_equal,
                                     quantize)
from npbert.quant.tmiqr import tmiqr_clip_ref, tmiqr_qparams_ref, tmiqr_threshold_ref, token_absmax

__all__ = [
    "ESTIMATORS", "QUANTIZERS", "QParams", "RangeEstimator", "dequantize", "fake_quant", "get_quantizer",
    "grid_limits", "group_bounds_equal", "inverse_permutation", "make_estimator", "peg_qparams",
    "permute_linear_in", "permute_linear_out", "permute_vector", "qparams_from_range", "quantize",
    "range_permutation", "tmiqr_clip_ref", "tmiqr_qparams_ref", "tmiqr_threshold_ref", "token_absmax",
]
