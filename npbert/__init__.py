"""npbert: a from-scratch NumPy/Numba encoder engine for BERT-family models, FP32 and exact integer."""

from npbert.errors import NpbertError

__version__ = "0.1.0"
__all__ = ["NpbertError", "__version__"]
