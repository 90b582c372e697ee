"""Attention's input projection split into heads, with a backward that puts the heads' gradients
back together and sums the bias gradient in the same pass.

``x W^T + b`` gives q, k and v as views of one [B, T, 3, H, D] tensor. Autograd's backward stacks
the three gradients from attention into a copy of that layout, then reads the copy again for the
bias gradient: at ViT-B/16's 256 x 197 tokens these two passes took 3.2 of a step's 75 GPU ms
(docs/benchmarks.md, part 46). Here the backward is one Triton kernel on a CUDA GPU that copies
each head's gradient into its columns and keeps the column sums; the two matrix products of the
backward read the copy as before.

``qkv_heads(x, weight, bias, heads)``: x [B, T, C], weight [3C, C], bias [3C] ->
q, k, v [B, H, T, D] (D = C / H). Without a CUDA GPU or Triton the same backward runs in torch.
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F

from .triton_support import TRITON, tl, triton

ROWS, BLOCK_M, BLOCK_N, WARPS = 256, 32, 128, 4


def split_heads(qkv: torch.Tensor, heads: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """qkv [B, T, 3C] -> q, k, v [B, H, T, D], views of it."""
    B, T, C3 = qkv.shape
    return qkv.view(B, T, 3, heads, C3 // (3 * heads)).permute(2, 0, 3, 1, 4).unbind(0)


def _heads(y: torch.Tensor, heads: int) -> torch.Tensor:
    """y [B, T, C] -> [B, H, T, D], a view."""
    B, T, C = y.shape
    return y.view(B, T, heads, C // heads).transpose(1, 2)


def heads_backward(dq: torch.Tensor, dk: torch.Tensor, dv: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """The gradients of q, k, v [B, H, T, D] -> (the gradient of qkv [B * T, 3C], in their dtype;
    the bias gradient [3C], float32 sums): the Triton kernel for CUDA tensors, torch elsewhere."""
    if dq.is_cuda and TRITON:
        return torch.ops.clipscratch.qkv_heads_backward(dq, dk, dv)
    B, H, T, D = dq.shape
    grad = torch.stack([dq, dk, dv], dim=2).transpose(1, 3).reshape(B * T, 3 * H * D)  # [B*T, 3C]
    return grad, grad.sum(0, dtype=torch.promote_types(grad.dtype, torch.float32))


class _QKVHeads(torch.autograd.Function):
    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, heads: int):
        ctx.save_for_backward(x, weight)
        ctx.dtypes = (x.dtype, weight.dtype, bias.dtype)
        return tuple(_heads(F.linear(x, w, b), heads) for w, b in zip(weight.chunk(3), bias.chunk(3)))

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, dq: torch.Tensor, dk: torch.Tensor, dv: torch.Tensor):
        x, weight = ctx.saved_tensors
        x_dtype, weight_dtype, bias_dtype = ctx.dtypes
        grad, grad_bias = heads_backward(dq, dk, dv)  # [M, 3C], [3C]
        x2 = x.reshape(-1, x.shape[-1]).to(grad.dtype)  # [M, C]
        grad_x = (grad @ weight.to(grad.dtype)).view(x.shape)  # [B, T, C]
        grad_weight = grad.t() @ x2  # [3C, C]
        return grad_x.to(x_dtype), grad_weight.to(weight_dtype), grad_bias.to(bias_dtype), None


def qkv_heads(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
              heads: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v [B, H, T, D] = the heads of x W^T + b, backward in one pass (module docstring)."""
    return _QKVHeads.apply(x, weight, bias, heads)


def launch(kernel, dq: torch.Tensor, dk: torch.Tensor, dv: torch.Tensor, rows: int = ROWS, block_m: int = BLOCK_M,
           block_n: int = BLOCK_N, warps: int = WARPS) -> Tuple[torch.Tensor, torch.Tensor]:
    """Run ``kernel`` (qkv_heads_backward_kernel, or torch.library.wrap_triton of it) on the
    gradients of q, k, v [B, H, T, D] (any strides, one launch for the three: (grad [B * T, 3C],
    grad_bias [3C])."""
    if not dq.stride() == dk.stride() == dv.stride():  # the kernel reads the three with one set of strides
        dq, dk, dv = (t.contiguous() for t in (dq, dk, dv))
    B, H, T, D = dq.shape
    M, C = B * T, H * D
    strips = (M + rows - 1) // rows
    blocks = (C + block_n - 1) // block_n  # column blocks of each of q, k, v
    grad = torch.empty((M, 3 * C), dtype=dq.dtype, device=dq.device)
    partial = torch.empty((strips, 3 * C), dtype=torch.float32, device=dq.device)  # each strip's column sums
    kernel[(3 * blocks, strips)](dq, dk, dv, grad, partial, M, T, C, blocks, *dq.stride(), D=D, ROWS=rows,
                                 BLOCK_M=block_m, BLOCK_N=block_n, num_warps=warps)
    return grad, partial.sum(0)


if TRITON:
    @triton.jit
    def qkv_heads_backward_kernel(q_ptr, k_ptr, v_ptr, grad_ptr, partial_ptr, M, T, C, blocks, s_b, s_h, s_t, s_d,
                                  D: tl.constexpr, ROWS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        # program (j, i): column block j % blocks of q, k or v (j // blocks; head = column // D), rows
        # [i * ROWS, (i + 1) * ROWS) (row = b * T + t), written to its columns of grad [M, 3C]
        block, strip = tl.program_id(0), tl.program_id(1)
        part = block // blocks
        if part == 0:
            src_ptr = q_ptr
        elif part == 1:
            src_ptr = k_ptr
        else:
            src_ptr = v_ptr
        cols = (block % blocks) * BLOCK_N + tl.arange(0, BLOCK_N)  # [BLOCK_N], within q, k or v
        col_ok = cols < C
        col_offset = (cols // D) * s_h + (cols % D) * s_d
        out_cols = part * C + cols  # within grad's 3C
        sums = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        for start in range(0, ROWS, BLOCK_M):
            rows = strip * ROWS + start + tl.arange(0, BLOCK_M)  # [BLOCK_M]
            ok = (rows[:, None] < M) & col_ok[None, :]  # [BLOCK_M, BLOCK_N]
            row_offset = (rows // T).to(tl.int64) * s_b + (rows % T).to(tl.int64) * s_t
            g = tl.load(src_ptr + row_offset[:, None] + col_offset[None, :], mask=ok, other=0.0)
            tl.store(grad_ptr + rows[:, None].to(tl.int64) * (3 * C) + out_cols[None, :], g, mask=ok)
            sums += g.to(tl.float32)
        tl.store(partial_ptr + strip * (3 * C) + out_cols, tl.sum(sums, axis=0), mask=col_ok)

    @torch.library.triton_op("clipscratch::qkv_heads_backward", mutates_args=())
    def _backward_op(dq: torch.Tensor, dk: torch.Tensor, dv: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The kernel as a torch operator, which torch.compile traces into."""
        return launch(torch.library.wrap_triton(qkv_heads_backward_kernel), dq, dk, dv)
