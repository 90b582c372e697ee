"""The MLP's hidden bias and activation, act(h + b), with the bias gradient computed in the
pass that computes the hidden gradient.

Autograd (compiled by Inductor as well) runs the backward of ``act(x W^T + b)`` as two passes
over the [M, 4C] hidden layer: one writes grad * act'(h), the other sums the same expression
over the rows for the bias, reading the gradient and h a second time. At ViT-B/16's 256 x 197
tokens that second pass took 1.7 of a step's 75 GPU ms (docs/benchmarks.md, part 46). Here the
backward is one Triton kernel on a CUDA GPU: each program takes a strip of rows and a block of
columns, writes the hidden gradient and keeps the strip's column sums; a sum over the strips
(a few hundred rows of floats) gives the bias gradient.

``bias_activation(h, bias, name)``: h [..., N] = x W^T without its bias, the bias [N]. The
forward is plain torch (compiled, it is one fused kernel, as before); the backward computes in
float32 and rounds the hidden gradient to h's dtype, as autograd's does. Without a CUDA GPU or
Triton (or with torch < 2.6) the same formulas run in torch (``bias_activation_backward``).

Off by default in the model (``CLIP.set_fused_activation``, layers.MLP); training turns it on with
compile=true (``fused_activation`` in train/config.py), where the forward fuses into one kernel and
the step is 1-2% faster; eager, the forward's separate casts and add cost more than the backward
saves (docs/benchmarks.md, parts 64-78).
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from .triton_support import TRITON, tl, triton

ACTIVATIONS = ("gelu", "quick_gelu")
QUICK_GELU_SCALE = 1.702
# Rows per program: the bias gradient is summed over M / ROWS strips afterwards (197 x 3072
# floats at ViT-B/16's M = 50,432). Within a strip the program steps BLOCK_M rows at a time.
ROWS, BLOCK_M, BLOCK_N, WARPS = 256, 32, 128, 4


def activate(z: torch.Tensor, name: str) -> torch.Tensor:
    """act(z): GELU (exact, erf) or OpenAI's QuickGELU."""
    if name == "quick_gelu":
        return z * torch.sigmoid(QUICK_GELU_SCALE * z)
    return F.gelu(z)


def derivative(z: torch.Tensor, name: str) -> torch.Tensor:
    """act'(z)."""
    if name == "quick_gelu":
        s = torch.sigmoid(QUICK_GELU_SCALE * z)
        return s * (1 + QUICK_GELU_SCALE * z * (1 - s))
    cdf = 0.5 * (1 + torch.erf(z * math.sqrt(0.5)))
    pdf = torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    return cdf + z * pdf


def bias_activation_backward(grad: torch.Tensor, h: torch.Tensor, bias: torch.Tensor,
                             name: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """(grad_h [M, N] in h's dtype, grad_bias [N] in the bias's) for grad, h [M, N]: the Triton
    kernel for CUDA tensors where it runs, torch's operations otherwise."""
    if h.is_cuda and TRITON:
        return torch.ops.clipscratch.bias_activation_backward(grad, h, bias, name == "quick_gelu")
    f = _at_least_float32(h)
    grad_z = grad.to(f) * derivative(h.to(f) + bias.to(f), name)  # [M, N]
    return grad_z.to(h.dtype), grad_z.sum(0).to(bias.dtype)


def bias_activation_backward_fp8(grad: torch.Tensor, h: torch.Tensor, bias: torch.Tensor, name: str,
                                 scale: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """bias_activation_backward's (grad_h, grad_bias) and grad_h / scale in e5m2 (saturated) with grad_h's
    absolute maximum, from one pass of the kernel (``launch``'s fp8 option) where it runs; torch's
    operations otherwise (converting the rounded grad_h, where the kernel converts its float32 value)."""
    if h.is_cuda and TRITON:
        return torch.ops.clipscratch.bias_activation_backward_fp8(grad, h, bias, name == "quick_gelu", scale)
    grad_h, grad_bias = bias_activation_backward(grad, h, bias, name)
    return grad_h, grad_bias, saturate(grad_h, scale, torch.float8_e5m2), grad_h.abs().amax().float()


def saturate(t: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """t / scale in the FP8 ``dtype``, clamped to its range (a scale from an earlier step may be too small)."""
    top = torch.finfo(dtype).max
    return (t.float() * (1 / scale)).clamp(-top, top).to(dtype)


def _at_least_float32(t: torch.Tensor) -> torch.dtype:
    return torch.promote_types(t.dtype, torch.float32)


def as_dtype(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """t in dtype, without the no-op ``t.to(dtype)`` where it already is: torch 2.11's Dynamo, tracing
    an autograd.Function whose forward returned such an alias of an intermediate, sent the output's
    gradient to another slot and ran the backward on zeros (pytorch/pytorch#180642; the compiled fp32
    step of docs/benchmarks.md, parts 67-73)."""
    return t if t.dtype == dtype else t.to(dtype)


class _BiasActivation(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h: torch.Tensor, bias: torch.Tensor, name: str) -> torch.Tensor:
        ctx.save_for_backward(h, bias)
        ctx.name = name
        f = _at_least_float32(h)
        return as_dtype(activate(as_dtype(h, f) + as_dtype(bias, f), name), h.dtype)  # [..., N]

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        h, bias = ctx.saved_tensors
        N = h.shape[-1]
        grad_h, grad_bias = bias_activation_backward(grad.reshape(-1, N).contiguous(), h.reshape(-1, N).contiguous(),
                                                     bias, ctx.name)
        return grad_h.view(h.shape), grad_bias, None


def bias_activation(h: torch.Tensor, bias: torch.Tensor, name: str) -> torch.Tensor:
    """act(h + bias) [..., N], its backward in one pass (module docstring)."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; use one of {', '.join(ACTIVATIONS)}")
    return _BiasActivation.apply(h, bias, name)


def launch(kernel, grad: torch.Tensor, h: torch.Tensor, bias: torch.Tensor, quick: bool,
           rows: int = ROWS, block_m: int = BLOCK_M, block_n: int = BLOCK_N, warps: int = WARPS,
           fp8: Optional[Tuple[torch.Tensor, torch.dtype]] = None):
    """Run ``kernel`` (bias_activation_backward_kernel, or torch.library.wrap_triton of it) on
    contiguous grad, h [M, N]: (grad_h [M, N], grad_bias [N]). With ``fp8 = (scale, dtype)`` the
    kernel also writes grad_h / scale in that FP8 dtype (saturated) and the absolute maximum of
    grad_h: (grad_h, grad_bias, the FP8 copy [M, N], its maximum []) (models/fp8_delayed.py)."""
    M, N = h.shape
    strips = (M + rows - 1) // rows
    grad_h = torch.empty_like(h)
    partial = torch.empty((strips, N), dtype=torch.float32, device=h.device)  # each strip's column sums
    grid = ((N + block_n - 1) // block_n, strips)
    scale, grad_h8, maxima = (grad_h, grad_h, partial) if fp8 is None else (
        fp8[0], torch.empty_like(h, dtype=fp8[1]), torch.empty(grid[::-1], dtype=torch.float32, device=h.device))
    kernel[grid](grad, h, bias, grad_h, partial, M, N, scale, grad_h8, maxima, QUICK=quick, ROWS=rows,
                 BLOCK_M=block_m, BLOCK_N=block_n, FP8=fp8 is not None,
                 FP8_MAX=0.0 if fp8 is None else torch.finfo(fp8[1]).max, num_warps=warps)
    if fp8 is None:
        return grad_h, partial.sum(0).to(bias.dtype)
    return grad_h, partial.sum(0).to(bias.dtype), grad_h8, maxima.amax()


if TRITON:
    @triton.jit
    def bias_activation_backward_kernel(grad_ptr, h_ptr, bias_ptr, grad_h_ptr, partial_ptr, M, N,
                                        scale_ptr, grad_h8_ptr, maxima_ptr,
                                        QUICK: tl.constexpr, ROWS: tl.constexpr, BLOCK_M: tl.constexpr,
                                        BLOCK_N: tl.constexpr, FP8: tl.constexpr, FP8_MAX: tl.constexpr):
        # program (j, i): columns [j * BLOCK_N, (j + 1) * BLOCK_N) of rows [i * ROWS, (i + 1) * ROWS); the
        # programs that run side by side share their rows, so that together they read whole rows of memory
        block, strip = tl.program_id(0), tl.program_id(1)
        cols = block * BLOCK_N + tl.arange(0, BLOCK_N)  # [BLOCK_N]
        col_ok = cols < N
        b = tl.load(bias_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
        sums = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)  # summed over the rows once, at the end
        top = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)  # FP8: the largest |grad_h| seen
        inv_scale = 1.0
        if FP8:
            inv_scale = 1.0 / tl.load(scale_ptr)
        for start in range(0, ROWS, BLOCK_M):
            rows = strip * ROWS + start + tl.arange(0, BLOCK_M)  # [BLOCK_M]
            ok = (rows[:, None] < M) & col_ok[None, :]  # [BLOCK_M, BLOCK_N]
            offsets = rows[:, None].to(tl.int64) * N + cols[None, :]
            g = tl.load(grad_ptr + offsets, mask=ok, other=0.0).to(tl.float32)
            z = tl.load(h_ptr + offsets, mask=ok, other=0.0).to(tl.float32) + b[None, :]
            if QUICK:  # 1.702: QUICK_GELU_SCALE (a jit function reads no Python globals)
                s = tl.sigmoid(1.702 * z)
                d = s * (1.0 + 1.702 * z * (1.0 - s))
            else:  # Phi(z) + z phi(z)
                d = 0.5 * (1.0 + tl.erf(z * 0.7071067811865476)) + z * tl.exp(-0.5 * z * z) * 0.3989422804014327
            grad_z = tl.where(ok, g * d, 0.0)
            tl.store(grad_h_ptr + offsets, grad_z.to(grad_h_ptr.dtype.element_ty), mask=ok)
            sums += grad_z
            if FP8:  # grad_h / scale, saturated to the format's range
                g8 = tl.minimum(tl.maximum(grad_z * inv_scale, -FP8_MAX), FP8_MAX)
                tl.store(grad_h8_ptr + offsets, g8.to(grad_h8_ptr.dtype.element_ty), mask=ok)
                top = tl.maximum(top, tl.abs(grad_z))
        tl.store(partial_ptr + strip * N + cols, tl.sum(sums, axis=0), mask=col_ok)
        if FP8:
            tl.store(maxima_ptr + strip * tl.num_programs(0) + block, tl.max(tl.max(top, axis=1), axis=0))

    @torch.library.triton_op("clipscratch::bias_activation_backward", mutates_args=())
    def _backward_op(grad: torch.Tensor, h: torch.Tensor, bias: torch.Tensor,
                     quick: bool) -> Tuple[torch.Tensor, torch.Tensor]:
        """The kernel as a torch operator, which torch.compile traces into."""
        return launch(torch.library.wrap_triton(bias_activation_backward_kernel), grad, h, bias, quick)

    @torch.library.triton_op("clipscratch::bias_activation_backward_fp8", mutates_args=())
    def _backward_fp8_op(grad: torch.Tensor, h: torch.Tensor, bias: torch.Tensor, quick: bool,
                         scale: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The kernel with its e5m2 copy, 16 rows a step and 8 warps (the fastest with the copy at
        ViT-B/16's shapes: docs/benchmarks.md, part 111)."""
        return launch(torch.library.wrap_triton(bias_activation_backward_kernel), grad, h, bias, quick,
                      block_m=16, warps=8, fp8=(scale, torch.float8_e5m2))
