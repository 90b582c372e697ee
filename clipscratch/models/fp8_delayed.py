"""FP8 with delayed scaling for the two projections whose output gradients the one-pass backward
kernels produce: the attention's q/k/v projection (qkv_projection.py) and the MLP's first
projection (bias_activation.py).

FP8 pays at ViT-B/16's width only where its casts cost next to nothing (docs/benchmarks.md, parts
104-112). A dynamic scale needs the whole tensor's maximum before the first element is cast; a
delayed one does not: each operand is cast with the scale of the previous step's maximum
(saturating), and this step's maximum is taken beside the cast for the next step. Then the input
(a LayerNorm's output) is cast in the LayerNorm's own kernel by Inductor, and the output gradient by
the one-pass backward kernel that computes it, which writes an e5m2 copy and its maximum beside its
bf16 output. The forward and input-gradient products run in FP8 (torch._scaled_mm; fast accumulation,
an e4m3 weight cast per step), the weight gradient in bf16 from the saved bf16 input.

``DelayedScales`` holds one projection's two scales (input, output gradient). Its ``maxima`` leaf
receives, as its gradient, the step's maxima of the input and the output gradient (a backward can
hand nothing else out, and the compiled step keeps no side effect); ``update()`` turns them into
the next step's scales. Until a step has been measured the scales are 1: ``CLIP.set_fp8_delayed``
turns the recipe on, the training loop runs a first forward and backward that only measures
(train/run.py), then ``update_scales`` after every backward.
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import nn

from .bias_activation import activate, bias_activation_backward_fp8, saturate
from .fp8 import E4M3, E5M2, to_fp8
from .qkv_projection import gather_heads_fp8, split_heads

# the formats' largest values: a scale is a maximum divided by them ([input, output gradient])
LARGEST = (torch.finfo(E4M3).max, torch.finfo(E5M2).max)


class DelayedScales(nn.Module):
    """The scales [input, output gradient] one projection casts with this step (a buffer, so that DDP
    gives every process rank 0's), and the leaf its backward returns this step's maxima to (a plain
    attribute, which DDP leaves alone). Not in the state dict: a resumed run measures again. With
    gradient caching the maxima of the micro-batches add up: larger scales, never an overflow."""

    def __init__(self):
        super().__init__()
        # each its own tensor: cuBLAS refused a scale at an offset into a larger one (docs/benchmarks.md, part 113)
        self.register_buffer("x_scale", torch.ones(()), persistent=False)  # float32
        self.register_buffer("grad_scale", torch.ones(()), persistent=False)
        self.register_buffer("largest", torch.tensor(LARGEST), persistent=False)  # [2]: no copy from the host a step
        self.maxima = torch.zeros(2, requires_grad=True)  # [2]: [input, output gradient]

    def _apply(self, fn, recurse=True):
        """Moved or cast: the scales stay float32, and ``maxima`` follows them as a new leaf."""
        super()._apply(fn, recurse)
        self.x_scale, self.grad_scale, self.largest = self.x_scale.float(), self.grad_scale.float(), self.largest.float()
        self.maxima = torch.zeros(2, device=self.largest.device, requires_grad=True)
        return self

    @torch.no_grad()
    def update(self) -> bool:
        """This step's maxima (the gradient of ``maxima``) become the next step's scales; False where no
        backward reached this projection."""
        if self.maxima.grad is None:
            return False
        scales = self.maxima.grad.clamp_min(1e-12) / self.largest
        self.x_scale.copy_(scales[0])
        self.grad_scale.copy_(scales[1])
        self.maxima.grad = None
        return True


def update_scales(model: nn.Module) -> int:
    """``update()`` on every DelayedScales under ``model``; the number updated."""
    return sum(m.update() for m in model.modules() if isinstance(m, DelayedScales))


def _cast_weight(weight: torch.Tensor, transposed: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """(weight or its transpose, contiguous, in e4m3 scaled by its own maximum, that scale): dynamic, as
    fp8.py's, the weight being small and changing every step."""
    return to_fp8(weight.t().contiguous() if transposed else weight, E4M3)


def _forward_product(x2: torch.Tensor, weight: torch.Tensor, bias, x_scale: torch.Tensor) -> torch.Tensor:
    """x2 [M, K] (bf16) W^T (+ b) with both operands in e4m3: [M, N] bf16."""
    w8, w_scale = _cast_weight(weight, transposed=False)  # [N, K]
    return torch._scaled_mm(saturate(x2, x_scale, E4M3), w8.t(), scale_a=x_scale, scale_b=w_scale,
                            bias=None if bias is None else bias.to(torch.bfloat16), out_dtype=torch.bfloat16,
                            use_fast_accum=True)


def _input_gradient(grad8: torch.Tensor, weight: torch.Tensor, grad_scale: torch.Tensor) -> torch.Tensor:
    """grad [M, N] (its e5m2 copy) W: [M, K] bf16."""
    wt8, wt_scale = _cast_weight(weight, transposed=True)  # [K, N]
    return torch._scaled_mm(grad8, wt8.t(), scale_a=grad_scale, scale_b=wt_scale, out_dtype=torch.bfloat16,
                            use_fast_accum=True)


class _MLPIn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, name, x_scale, grad_scale, maxima):
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).to(torch.bfloat16)  # [M, C]
        h = _forward_product(x2, weight, None, x_scale)  # [M, 4C]
        ctx.save_for_backward(x2, h, weight, bias, grad_scale, x2.abs().amax().float())
        ctx.shape, ctx.name = shape, name
        f = torch.float32
        return activate(h.to(f) + bias.to(f), name).to(torch.bfloat16).view(*shape[:-1], -1)

    @staticmethod
    def backward(ctx, grad):
        x2, h, weight, bias, grad_scale, x_max = ctx.saved_tensors
        grad_h, grad_bias, grad_h8, grad_max = bias_activation_backward_fp8(
            grad.reshape(h.shape).to(h.dtype).contiguous(), h, bias, ctx.name, grad_scale)  # [M, 4C] x2, [4C], []
        grad_x = _input_gradient(grad_h8, weight, grad_scale).view(ctx.shape)
        grad_weight = (grad_h.t() @ x2).to(weight.dtype)  # [4C, C]
        return grad_x, grad_weight, grad_bias, None, None, None, torch.stack((x_max, grad_max))


def mlp_in(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, name: str, state: DelayedScales) -> torch.Tensor:
    """act(x W^T + b) [..., 4C] in bf16 for x [..., C], the product and its input gradient in FP8."""
    return _MLPIn.apply(x, weight, bias, name, state.x_scale, state.grad_scale, state.maxima)


class _QKVHeads(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, heads, x_scale, grad_scale, maxima):
        B, T, C = x.shape
        x2 = x.reshape(-1, C).to(torch.bfloat16)  # [M, C]
        qkv = _forward_product(x2, weight, bias, x_scale)  # [M, 3C]
        ctx.save_for_backward(x2, weight, grad_scale, x2.abs().amax().float())
        ctx.shape, ctx.bias_dtype = x.shape, bias.dtype
        return split_heads(qkv.view(B, T, 3 * C), heads)  # 3 x [B, H, T, D]

    @staticmethod
    def backward(ctx, dq, dk, dv):
        x2, weight, grad_scale, x_max = ctx.saved_tensors
        grad, grad_bias, grad8, grad_max = gather_heads_fp8(dq, dk, dv, grad_scale)  # [M, 3C] x2, [3C], []
        grad_x = _input_gradient(grad8, weight, grad_scale).view(ctx.shape)
        grad_weight = (grad.t() @ x2).to(weight.dtype)  # [3C, C]
        return grad_x, grad_weight, grad_bias.to(ctx.bias_dtype), None, None, None, torch.stack((x_max, grad_max))


def qkv_heads(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, heads: int,
              state: DelayedScales) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v [B, H, T, D] in bf16 for x [B, T, C], the projection and its input gradient in FP8."""
    return _QKVHeads.apply(x, weight, bias, heads, state.x_scale, state.grad_scale, state.maxima)
