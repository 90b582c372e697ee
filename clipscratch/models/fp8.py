"""FP8 training for the transformer's linear layers (Hopper GPUs; exact emulation on the CPU).

``fp8_linear(x, weight, bias)`` computes y = x W^T + b with all three matrix products of
training in FP8 through ``torch._scaled_mm``: the forward and the input gradient read e4m3
activations and weights, the weight gradient and input gradient read the output gradient in
e5m2 (more range, as gradients need). Each operand is scaled by its own absolute maximum
(dynamic, per tensor) so it fills the format's range; products accumulate in float32 and come
out in the autocast dtype (bf16) or the input's.

``CLIP.set_fp8(True)`` routes every attention and MLP projection of both towers through it;
the patch embedding, the final projections and LayerNorms stay in bf16.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

E4M3, E5M2 = torch.float8_e4m3fn, torch.float8_e5m2


def to_fp8(x: torch.Tensor, dtype: torch.dtype) -> Tuple[torch.Tensor, torch.Tensor]:
    """(x / scale in FP8, scale): scale = amax / the format's largest value (float32, > 0)."""
    amax = x.detach().abs().amax().float().clamp_min(1e-12)
    scale = amax / torch.finfo(dtype).max
    return (x.float() / scale).to(dtype), scale


def _out_dtype(x: torch.Tensor) -> torch.dtype:
    device = x.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype


def _col_major(t: torch.Tensor) -> torch.Tensor:
    """The same matrix in column-major memory, which _scaled_mm's second operand needs."""
    return t.t().contiguous().t()


def _pad_rows(t: torch.Tensor) -> torch.Tensor:
    """[M, K] -> [M', K] with zero rows up to a multiple of 16 (the weight gradient's product runs
    over M, and _scaled_mm wants it so); zeros change no product and no absolute maximum."""
    return F.pad(t, (0, 0, 0, (-t.shape[0]) % 16))


class _FP8Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]):
        shape, out_dtype = x.shape, _out_dtype(x)
        M = x.numel() // shape[-1]
        x8, sx = to_fp8(_pad_rows(x.reshape(M, shape[-1])), E4M3)  # [M', K]
        w8, sw = to_fp8(weight, E4M3)  # [N, K]
        y = torch._scaled_mm(x8, _col_major(w8.t()), scale_a=sx, scale_b=sw, out_dtype=out_dtype)[:M]  # [M, N]
        if bias is not None:
            y = y + bias.to(out_dtype)
        ctx.save_for_backward(x8, sx, w8, sw)
        ctx.shape, ctx.has_bias, ctx.dtypes = shape, bias is not None, (x.dtype, weight.dtype)
        return y.view(*shape[:-1], -1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x8, sx, w8, sw = ctx.saved_tensors
        g2 = grad.reshape(-1, grad.shape[-1])  # [M, N]
        M = g2.shape[0]
        g8, sg = to_fp8(_pad_rows(g2), E5M2)  # [M', N]
        grad_x = torch._scaled_mm(g8, _col_major(w8), scale_a=sg, scale_b=sw, out_dtype=torch.float32)[:M]  # [M, K]
        grad_w = torch._scaled_mm(g8.t().contiguous(), _col_major(x8), scale_a=sg, scale_b=sx, out_dtype=torch.float32)  # [N, K]
        grad_b = g2.float().sum(0) if ctx.has_bias else None
        x_dtype, w_dtype = ctx.dtypes
        return (grad_x.to(x_dtype).view(ctx.shape), grad_w.to(w_dtype),
                None if grad_b is None else grad_b.to(w_dtype))


def fp8_fits(weight: torch.Tensor) -> bool:
    """_scaled_mm's shape rule for the weight [N, K]: both a multiple of 16 (the rows of the
    input are padded to one)."""
    return weight.shape[0] % 16 == 0 and weight.shape[1] % 16 == 0


def linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], fp8: bool = False) -> torch.Tensor:
    """F.linear, or its FP8 version when ``fp8`` is on and the weight's shape allows it."""
    if fp8 and fp8_fits(weight):
        return _FP8Linear.apply(x, weight, bias)
    return F.linear(x, weight, bias)
