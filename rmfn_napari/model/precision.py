"""Reduced-precision matrix products for the hidden linear layers only.

``float32`` (default) is exact single precision everywhere. ``tf32`` (CUDA only) and ``bf16``
(CUDA, or a CPU with bfloat16 units) compute the products ``W z`` of the hidden layers and their
two backward products in reduced precision, inputs rounded to a 10-bit (TF32) or 8-bit (bf16)
mantissa, accumulation in float32. Nothing else changes precision: the sine filters' phases
``ω·x + φ`` (whose angles reach hundreds of radians, where a 10-bit mantissa would be off by a
tenth of a radian), the heads, the FFTs, the slices and the global search's score expansion all
stay float32 — scoping the flags to these products is what this module is for.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

PRECISIONS = ("float32", "tf32", "bf16")


@contextmanager
def _tf32(enabled: bool):
    """TF32 matmuls on CUDA inside the block only (the flag is restored afterwards)."""
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


def _mm(a: torch.Tensor, b: torch.Tensor, precision: str) -> torch.Tensor:
    if precision == "bf16":
        return (a.to(torch.bfloat16) @ b.to(torch.bfloat16)).to(torch.float32)
    with _tf32(precision == "tf32"):
        return a @ b


class _HiddenProduct(torch.autograd.Function):
    """``z @ Wᵀ`` with the forward and both backward products at ``precision``."""

    @staticmethod
    def forward(ctx, z, weight, precision):
        ctx.save_for_backward(z, weight)
        ctx.precision = precision
        return _mm(z, weight.T, precision)

    @staticmethod
    def backward(ctx, grad):
        z, weight = ctx.saved_tensors
        grad_z = _mm(grad, weight, ctx.precision) if ctx.needs_input_grad[0] else None
        grad_w = None
        if ctx.needs_input_grad[1]:
            g2, z2 = grad.reshape(-1, grad.shape[-1]), z.reshape(-1, z.shape[-1])
            grad_w = _mm(g2.T, z2, ctx.precision)
        return grad_z, grad_w, None


def hidden_linear(layer: torch.nn.Linear, z: torch.Tensor, precision: str = "float32") -> torch.Tensor:
    """``layer(z)`` with its matrix product at ``precision`` (see the module docstring)."""
    if precision == "float32":
        return layer(z)
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    out = _HiddenProduct.apply(z, layer.weight, precision)
    return out if layer.bias is None else out + layer.bias


def supports_precision(precision: str, device: torch.device) -> str | None:
    """None if ``precision`` can run on ``device``, else why not (one sentence)."""
    if precision == "float32":
        return None
    if precision == "tf32" and device.type != "cuda":
        return "tf32 is a CUDA tensor-core format; on this device use bf16 or float32"
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return "this GPU has no bfloat16 support; use tf32 or float32"
    if precision not in PRECISIONS:
        return f"precision must be one of {PRECISIONS}"
    return None
