"""npbert: a from-scratch NumPy/Numba encoder engine for BERT-family models, FP32 and exact integer.

    from npbert import load_model, quantize_model
    m = load_model("weights/all-MiniLM-L6-v2")
    q = quantize_model(m, "dynamic")
"""

from npbert.errors import NpbertError

__version__ = "0.1.0"
__all__ = ["NpbertError", "__version__", "load_model", "quantize_model", "load_quantized"]


def __getattr__(name):
    # Lazy: `import npbert` stays cheap; the numba kernels load only when quantization is used.
    if name == "load_model":
        from npbert.model import load_model

        return load_model
    if name in ("quantize_model", "load_quantized"):
        from npbert import qmodel

        return getattr(qmodel, name)
    raise AttributeError(f"module 'npbert' has no attribute {name!r}")
