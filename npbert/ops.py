"""FP32 reference math in plain NumPy. No numba here: this file is the readable definition.

Shapes: B batch, T tokens, C hidden, h heads, d = C / h head size, I intermediate size.
"""

from __future__ import annotations

import numpy as np

# Abramowitz & Stegun 7.1.26: |erf error| <= 1.5e-7 for all x, i.e. float32 rounding level, so GELU
# agrees with torch's erf GELU to ~1e-7 * |x|. NumPy has no erf and scipy is not a runtime dependency.
_P = np.float32(0.3275911)
_A = [np.float32(a) for a in (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)]


def erf(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    ax = np.abs(x)
    t = np.float32(1.0) / (np.float32(1.0) + _P * ax)
    poly = ((((_A[4] * t + _A[3]) * t + _A[2]) * t + _A[1]) * t + _A[0]) * t
    y = np.float32(1.0) - poly * np.exp(-ax * ax)
    return np.copysign(y, x)


def gelu_erf(x: np.ndarray) -> np.ndarray:
    """HF 'gelu': 0.5 x (1 + erf(x / sqrt 2))."""
    return np.float32(0.5) * x * (np.float32(1.0) + erf(x * np.float32(1 / np.sqrt(2.0))))


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    """HF 'gelu_new' / 'gelu_pytorch_tanh'."""
    c = np.float32(np.sqrt(2.0 / np.pi))
    return np.float32(0.5) * x * (np.float32(1.0) + np.tanh(c * (x + np.float32(0.044715) * x * x * x)))


def relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, np.float32(0.0))


ACTIVATIONS = {"gelu": gelu_erf, "gelu_new": gelu_tanh, "gelu_pytorch_tanh": gelu_tanh, "relu": relu}


def layer_norm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float) -> np.ndarray:
    """[..., C] -> [..., C]: (x - mean) / sqrt(var + eps) * gamma + beta, biased variance (as torch)."""
    mean = x.mean(axis=-1, keepdims=True, dtype=np.float32)
    xc = x - mean
    var = np.mean(xc * xc, axis=-1, keepdims=True, dtype=np.float32)
    return (xc / np.sqrt(var + np.float32(eps))) * gamma + beta


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Max-subtracted, so exp never overflows; rows sum to 1."""
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def linear(x: np.ndarray, w: np.ndarray, b: np.ndarray | None) -> np.ndarray:
    """[..., K] @ W[N, K]^T + b[N] -> [..., N] (HF / torch Linear layout)."""
    y = x @ w.T
    return y + b if b is not None else y


def mask_bias(attention_mask: np.ndarray) -> np.ndarray:
    """[B, T] {0,1} -> [B, 1, 1, T] additive key bias: 0 for real tokens, float32 min for padding (as HF)."""
    return np.where(attention_mask[:, None, None, :] > 0, np.float32(0.0), np.finfo(np.float32).min).astype(
        np.float32
    )


def split_heads(x: np.ndarray, n_heads: int) -> np.ndarray:
    """[B, T, C] -> [B, h, T, d]."""
    B, T, C = x.shape
    return x.reshape(B, T, n_heads, C // n_heads).transpose(0, 2, 1, 3)


def merge_heads(x: np.ndarray) -> np.ndarray:
    """[B, h, T, d] -> [B, T, C]."""
    B, h, T, d = x.shape
    return x.transpose(0, 2, 1, 3).reshape(B, T, h * d)


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """q, k, v [B, h, T, d]; bias broadcastable to [B, h, T, T] -> context [B, h, T, d]."""
    scores = q @ k.transpose(0, 1, 3, 2) * np.float32(1.0 / np.sqrt(q.shape[-1])) + bias  # [B, h, T, T]
    return softmax(scores) @ v
