"""Short explanations of common autograd ops: what the forward computes and how the gradient flows.

Keys are op names without autograd's ``Backward<N>`` suffix. ``L`` is the loss,
``g = ∂L/∂y`` the gradient arriving from above.
"""
from __future__ import annotations

import re

OPS: dict[str, tuple[str, str]] = {
    "Addmm": ("y = x Wᵀ + b (nn.Linear; autograd sees mat2 = Wᵀ)",
              "∂L/∂x = g W,  ∂L/∂W = gᵀ x,  ∂L/∂b = Σ_batch g"),
    "Mm": ("y = A B (matrix product)", "∂L/∂A = g Bᵀ,  ∂L/∂B = Aᵀ g"),
    "Bmm": ("y[i] = A[i] B[i] (batched matrix product)", "∂L/∂A[i] = g[i] B[i]ᵀ,  ∂L/∂B[i] = A[i]ᵀ g[i]"),
    "Mv": ("y = A v", "∂L/∂A = g vᵀ,  ∂L/∂v = Aᵀ g"),
    "Convolution": ("y = W ⋆ x + b (cross-correlation over a sliding window)",
                    "∂L/∂x = transposed convolution of g with W,  ∂L/∂W = x ⋆ g,  ∂L/∂b = Σ g"),
    "Relu": ("y = max(x, 0)", "∂L/∂x = g · [x > 0]  (dead units pass no gradient)"),
    "LeakyRelu": ("y = x if x > 0 else αx", "∂L/∂x = g · (1 if x > 0 else α)"),
    "Gelu": ("y = x Φ(x)", "∂L/∂x = g · (Φ(x) + x φ(x))"),
    "Silu": ("y = x σ(x)", "∂L/∂x = g · σ(x)(1 + x(1 − σ(x)))"),
    "Sigmoid": ("y = σ(x) = 1 / (1 + e⁻ˣ)", "∂L/∂x = g · y(1 − y)  (≤ g/4: saturates, vanishes)"),
    "Tanh": ("y = tanh(x)", "∂L/∂x = g · (1 − y²)  (vanishes when |y| → 1)"),
    "MaxPool2DWithIndices": ("y = max over each pooling window (indices kept)",
                             "∂L/∂x = g routed to the arg-max position of each window, 0 elsewhere"),
    "AvgPool2D": ("y = mean over each pooling window", "∂L/∂x = g / window size, spread over the window"),
    "AdaptiveAvgPool2D": ("y = mean over adaptive windows (e.g. global average)",
                          "∂L/∂x = g / window size, spread over the window"),
    "View": ("y = x viewed with a new shape (no copy)", "∂L/∂x = g reshaped back to x's shape"),
    "Reshape": ("y = x reshaped", "∂L/∂x = g reshaped back"),
    "UnsafeView": ("y = x viewed with a new shape", "∂L/∂x = g reshaped back"),
    "T": ("y = xᵀ (2-D transpose; a Linear weight enters Addmm this way)", "∂L/∂x = gᵀ"),
    "Transpose": ("y = x with two dims swapped", "∂L/∂x = g with the same dims swapped back"),
    "Permute": ("y = x with dims permuted", "∂L/∂x = g with the inverse permutation"),
    "Expand": ("y = x broadcast to a bigger shape (no copy)", "∂L/∂x = g summed over the broadcast dims"),
    "Add": ("y = a + b", "∂L/∂a = g,  ∂L/∂b = g  (summed over broadcast dims)"),
    "Sub": ("y = a − b", "∂L/∂a = g,  ∂L/∂b = −g"),
    "Mul": ("y = a · b (elementwise)", "∂L/∂a = g · b,  ∂L/∂b = g · a"),
    "Div": ("y = a / b", "∂L/∂a = g / b,  ∂L/∂b = −g · a / b²"),
    "Neg": ("y = −x", "∂L/∂x = −g"),
    "Sum": ("y = Σ x", "∂L/∂x = g broadcast to x's shape"),
    "Mean": ("y = mean(x) = Σ x / n", "∂L/∂x = g / n broadcast to x's shape"),
    "Exp": ("y = eˣ", "∂L/∂x = g · y  (explodes for large x)"),
    "Log": ("y = ln x", "∂L/∂x = g / x  (explodes as x → 0)"),
    "Pow": ("y = xᵖ", "∂L/∂x = g · p xᵖ⁻¹"),
    "Sqrt": ("y = √x", "∂L/∂x = g / (2√x)"),
    "LogSoftmax": ("y = x − log Σ eˣ (along dim)", "∂L/∂x = g − softmax(x) · Σ g"),
    "Softmax": ("y = eˣ / Σ eˣ (along dim)", "∂L/∂x = y · (g − Σ (g · y))"),
    "NllLoss": ("L = −mean(x[i, target_i]) (x: log-probabilities)",
                "∂L/∂x[i, target_i] = −1/N, 0 elsewhere"),
    "MseLoss": ("L = mean((x − t)²)", "∂L/∂x = 2 (x − t) / N"),
    "BinaryCrossEntropy": ("L = −mean(t log x + (1 − t) log(1 − x))", "∂L/∂x = (x − t) / (x(1 − x) N)"),
    "NativeBatchNorm": ("y = γ (x − μ_B) / √(σ²_B + ε) + β (batch statistics)",
                        "∂L/∂γ = Σ g x̂,  ∂L/∂β = Σ g,  ∂L/∂x = γ/σ · (g − mean(g) − x̂ mean(g x̂))"),
    "CudnnBatchNorm": ("batch norm (cuDNN kernel)", "as NativeBatchNorm"),
    "NativeLayerNorm": ("y = γ (x − μ) / √(σ² + ε) + β (per sample, over the last dims)",
                        "∂L/∂γ = Σ g x̂,  ∂L/∂β = Σ g,  ∂L/∂x = γ/σ · (g − mean(g) − x̂ mean(g x̂))"),
    "Embedding": ("y[i] = W[index_i] (row lookup)", "∂L/∂W[r] = Σ of g[i] over the i with index_i = r"),
    "Cat": ("y = concatenation of the inputs along dim", "each input gets its slice of g"),
    "Stack": ("y = the inputs stacked along a new dim", "each input gets its slice of g"),
    "Select": ("y = x[..., i, ...]", "∂L/∂x = g placed at index i, 0 elsewhere"),
    "Slice": ("y = x[a:b]", "∂L/∂x = g placed in the slice, 0 elsewhere"),
    "Index": ("y = x[idx]", "∂L/∂x = g scattered (added) back at idx"),
    "Clone": ("y = copy of x", "∂L/∂x = g"),
    "ToCopy": ("y = x converted (dtype / device)", "∂L/∂x = g converted back"),
    "NativeDropout": ("y = x · m / (1 − p), random mask m (training only)",
                      "∂L/∂x = g · m / (1 − p)  (dropped units pass no gradient)"),
    "Dropout": ("y = x · m / (1 − p)", "∂L/∂x = g · m / (1 − p)"),
    "AccumulateGrad": ("a leaf tensor (parameter or input that requires grad)",
                       "adds the incoming gradient to .grad; the optimizer reads it from there"),
    "Clamp": ("y = clamp(x, lo, hi)", "∂L/∂x = g where lo < x < hi, 0 where clipped"),
    "Abs": ("y = |x|", "∂L/∂x = g · sign(x)"),
    "Squeeze": ("y = x without size-1 dims", "∂L/∂x = g unsqueezed back"),
    "Unsqueeze": ("y = x with a new size-1 dim", "∂L/∂x = g squeezed back"),
    "Where": ("y = cond ? a : b", "∂L/∂a = g where cond, ∂L/∂b = g elsewhere"),
    "ScaledDotProductEfficientAttention": ("y = softmax(Q Kᵀ / √d) V (fused)",
                                           "gradients of the same formula w.r.t. Q, K and V"),
}
_SUFFIX = re.compile(r"Backward\d*$")
_ALIASES = {"MaxPool2DWithIndices": ("MaxPool3DWithIndices", "MaxPool1DWithIndices"),
            "AvgPool2D": ("AvgPool3D", "AvgPool1D"),
            "Convolution": ("CudnnConvolution", "MkldnnConvolution", "ConvolutionOverrideable"),
            "Gelu": ("GeLU",), "Sum": ("SumDimIntList",), "Mean": ("MeanDim",),
            "Add": ("AddBackward", "Sum2"), "Softmax": ("SafeSoftmax",)}
_LOOKUP = {alias.lower(): key for key, aliases in _ALIASES.items() for alias in aliases}
_LOOKUP.update({key.lower(): key for key in OPS})


def base_name(op: str) -> str:
    """``AddmmBackward0`` -> ``Addmm``."""
    return _SUFFIX.sub("", op or "")


def explain(op: str) -> tuple[str, str] | None:
    """``(forward, gradient rule)`` for an op name (with or without the Backward suffix)."""
    key = _LOOKUP.get(base_name(op).lower())
    return OPS.get(key) if key else None
