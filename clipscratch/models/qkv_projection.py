"""The attention's q/k/v projection split into heads, with a backward that gathers the heads'
gradients and sums the bias gradient in one pass.

Autograd (compiled by Inductor as well) runs the backward of ``heads(x W^T + b)`` as two passes
over the attention's gradients dq, dk, dv [B, H, T, D]: one stacks them back into the [M, 3C]
gradient of the product, the other sums the same three tensors over the rows for the bias. At
ViT-B/16's 256 x 197 tokens they took 1.8 and 1.4 of a step's 75 GPU ms (docs/benchmarks.md,
part 46). Here the backward is one Triton kernel on a CUDA GPU: each program takes a strip of
rows and a block of one part's columns (q, k or v), copies them into [M, 3C] and keeps the
strip's column sums; a sum over the strips gives the bias gradient. The products' gradients
are then plain matrix products of the gathered [M, 3C] gradient, as autograd's.

``qkv_heads(x, weight, bias, heads)``: x [B, T, C], the packed projection weight [3C, C] and bias
[3C] -> q, k, v [B, H, T, D]. The forward is the product with its bias and the views of
``split_heads``, as before; the bias gradient is summed in float32 from the gradients in their
own dtype (autograd rounds it to that dtype first). Without a CUDA GPU or Triton the same formulas
run in torch (``gather_heads``).

Off by default in the model (``CLIP.set_fused_qkv``); train.py turns it on (``fused_qkv`` in
train/config.py), eager and compiled: the ViT-B/16 step was 1.1 ms (1.5%) faster compiled and 8%
eager (docs/benchmarks.md, parts 81-84).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from .bias_activation import as_dtype, saturate
from .triton_support import TRITON, tl, triton

# Rows per program, summed over M / ROWS strips afterwards; within a strip BLOCK_M rows at a time
ROWS, BLOCK_M, BLOCK_N, WARPS = 256, 32, 128, 4


def split_heads(qkv: torch.Tensor, heads: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """qkv [B, T, 3C] -> q, k, v [B, H, T, D]: views, no copy."""
    B, T, C3 = qkv.shape
    return qkv.view(B, T, 3, heads, C3 // (3 * heads)).permute(2, 0, 3, 1, 4).unbind(0)


def gather_heads(dq: torch.Tensor, dk: torch.Tensor, dv: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """dq, dk, dv [B, H, T, D] -> (their gradient of the product [B * T, 3C] in their dtype, its
    sum over the rows [3C] in float32): the Triton kernel for CUDA tensors where it runs, torch's
    operations otherwise."""
    if dq.is_cuda and TRITON:
        return torch.ops.clipscratch.gather_heads(dq, dk, dv)
    B, H, T, D = dq.shape
    grad = torch.stack((dq, dk, dv), dim=2).permute(0, 3, 2, 1, 4).reshape(B * T, 3 * H * D)  # [M, 3C]
    return grad, grad.sum(0, dtype=torch.promote_types(grad.dtype, torch.float32))


def gather_heads_fp8(dq: torch.Tensor, dk: torch.Tensor, dv: torch.Tensor,
                     scale: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """gather_heads' (grad, grad_bias) and grad / scale in e5m2 (saturated) with grad's absolute maximum,
    from one pass of the kernel (``launch``'s fp8 option) where it runs; torch's operations otherwise."""
    if dq.is_cuda and TRITON:
        return torch.ops.clipscratch.gather_heads_fp8(dq, dk, dv, scale)
    grad, grad_bias = gather_heads(dq, dk, dv)
    return grad, grad_bias, saturate(grad, scale, torch.float8_e5m2), grad.abs().amax().float()


class _QKVHeads(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, heads: int):
        ctx.save_for_backward(x, weight)
        ctx.bias_dtype = bias.dtype
        return split_heads(F.linear(x, weight, bias), heads)  # 3 x [B, H, T, D]

    @staticmethod
    def backward(ctx, dq: torch.Tensor, dk: torch.Tensor, dv: torch.Tensor):
        x, weight = ctx.saved_tensors
        needs_x, needs_weight, needs_bias, _ = ctx.needs_input_grad  # frozen: no product, as autograd
        grad, grad_bias = gather_heads(dq, dk, dv)  # [M, 3C], [3C]
        grad_x = grad_weight = None
        if needs_x:
            grad_x = as_dtype(grad @ as_dtype(weight, grad.dtype), x.dtype).view(x.shape)  # [B, T, C]
        if needs_weight:
            rows = x.reshape(-1, x.shape[-1])  # [M, C]
            grad_weight = as_dtype(grad.t() @ as_dtype(rows, grad.dtype), weight.dtype)  # [3C, C]
        return grad_x, grad_weight, as_dtype(grad_bias, ctx.bias_dtype) if needs_bias else None, None


def qkv_heads(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
              heads: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v [B, H, T, D] of x [B, T, C], the bias gradient in the pass that gathers the heads'
    gradients (module docstring)."""
    return _QKVHeads.apply(x, weight, bias, heads)


def launch(kernel, dq: torch.Tensor, dk: torch.Tensor, dv: torch.Tensor, rows: int = ROWS, block_m: int = BLOCK_M,
           block_n: int = BLOCK_N, warps: int = WARPS, fp8: Optional[Tuple[torch.Tensor, torch.dtype]] = None):
    """Run ``kernel`` (gather_heads_kernel, or torch.library.wrap_triton of it) on dq, dk, dv
    [B, H, T, D], any strides: (grad [B * T, 3C], grad_bias [3C] float32). With ``fp8 = (scale,
    dtype)`` the kernel also writes grad / scale in that FP8 dtype (saturated) and the absolute
    maximum of grad: (grad, grad_bias, the FP8 copy [B * T, 3C], its maximum []) (models/fp8_delayed.py)."""
    B, H, T, D = dq.shape
    M, C = B * T, H * D
    strips = (M + rows - 1) // rows
    grad = torch.empty((M, 3 * C), dtype=dq.dtype, device=dq.device)
    partial = torch.empty((strips, 3 * C), dtype=torch.float32, device=dq.device)  # each strip's column sums
    grid = (3 * ((C + block_n - 1) // block_n), strips)
    scale, grad8, maxima = (grad, grad, partial) if fp8 is None else (
        fp8[0], torch.empty_like(grad, dtype=fp8[1]), torch.empty(grid[::-1], dtype=torch.float32, device=dq.device))
    kernel[grid](dq, dk, dv, grad, partial, M, T, C, D, *dq.stride(), *dk.stride(), *dv.stride(), scale, grad8, maxima,
                 ROWS=rows, BLOCK_M=block_m, BLOCK_N=block_n, FP8=fp8 is not None,
                 FP8_MAX=0.0 if fp8 is None else torch.finfo(fp8[1]).max, num_warps=warps)
    if fp8 is None:
        return grad, partial.sum(0)
    return grad, partial.sum(0), grad8, maxima.amax()


if TRITON:
    @triton.jit
    def gather_heads_kernel(dq_ptr, dk_ptr, dv_ptr, grad_ptr, partial_ptr, M, T, C, D,
                            q_b, q_h, q_t, q_d, k_b, k_h, k_t, k_d, v_b, v_h, v_t, v_d, scale_ptr, grad8_ptr, maxima_ptr,
                            ROWS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, FP8: tl.constexpr,
                            FP8_MAX: tl.constexpr):
        # program (j, i): block j of the columns of q, then of k, then of v; rows [i * ROWS, (i + 1) * ROWS)
        block, strip = tl.program_id(0), tl.program_id(1)
        per_part = tl.cdiv(C, BLOCK_N)
        part = block // per_part  # 0: q, 1: k, 2: v
        if part == 0:
            src, s_b, s_h, s_t, s_d = dq_ptr, q_b, q_h, q_t, q_d
        elif part == 1:
            src, s_b, s_h, s_t, s_d = dk_ptr, k_b, k_h, k_t, k_d
        else:
            src, s_b, s_h, s_t, s_d = dv_ptr, v_b, v_h, v_t, v_d
        cols = (block % per_part) * BLOCK_N + tl.arange(0, BLOCK_N)  # [BLOCK_N]: h * D + d within the part
        col_ok = cols < C
        col_offsets = (cols // D).to(tl.int64) * s_h + (cols % D).to(tl.int64) * s_d
        sums = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)  # summed over the rows once, at the end
        top = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)  # FP8: the largest |grad| seen
        inv_scale = 1.0
        if FP8:
            inv_scale = 1.0 / tl.load(scale_ptr)
        for start in range(0, ROWS, BLOCK_M):
            rows = strip * ROWS + start + tl.arange(0, BLOCK_M)  # [BLOCK_M]: b * T + t
            ok = (rows[:, None] < M) & col_ok[None, :]  # [BLOCK_M, BLOCK_N]
            row_offsets = (rows // T).to(tl.int64) * s_b + (rows % T).to(tl.int64) * s_t
            g = tl.load(src + row_offsets[:, None] + col_offsets[None, :], mask=ok, other=0.0)
            out_offsets = rows[:, None].to(tl.int64) * (3 * C) + part * C + cols[None, :]
            tl.store(grad_ptr + out_offsets, g, mask=ok)
            sums += g.to(tl.float32)
            if FP8:  # grad / scale, saturated to the format's range
                g8 = tl.minimum(tl.maximum(g.to(tl.float32) * inv_scale, -FP8_MAX), FP8_MAX)
                tl.store(grad8_ptr + out_offsets, g8.to(grad8_ptr.dtype.element_ty), mask=ok)
                top = tl.maximum(top, tl.abs(g.to(tl.float32)))
        tl.store(partial_ptr + strip * (3 * C) + part * C + cols, tl.sum(sums, axis=0), mask=col_ok)
        if FP8:
            tl.store(maxima_ptr + strip * tl.num_programs(0) + block, tl.max(tl.max(top, axis=1), axis=0))

    @torch.library.triton_op("clipscratch::gather_heads", mutates_args=())
    def _gather_heads_op(dq: torch.Tensor, dk: torch.Tensor, dv: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The kernel as a torch operator, which torch.compile traces into."""
        return launch(torch.library.wrap_triton(gather_heads_kernel), dq, dk, dv)

    @torch.library.triton_op("clipscratch::gather_heads_fp8", mutates_args=())
    def _gather_heads_fp8_op(dq: torch.Tensor, dk: torch.Tensor, dv: torch.Tensor,
                             scale: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The kernel with its e5m2 copy."""
        return launch(torch.library.wrap_triton(gather_heads_kernel), dq, dk, dv, fp8=(scale, torch.float8_e5m2))
