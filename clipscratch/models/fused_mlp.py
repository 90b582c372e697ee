"""The MLP with its activation inside the matrix products' epilogues.

Compiled, the MLP ``act(x W1^T + b1) W2^T + b2`` of a training step passes over its [M, 4C]
hidden layer four times besides the products: the forward's activation reads the product and
writes act (bias_activation.py's kernel or Inductor's), and the backward's activation kernel reads
the hidden gradient that the product ``g W2`` wrote, and h, to write grad * act'(h + b1). Here the
first product's epilogue writes h and act together, and the backward's product ``g W2`` applies
act'(h + b1) and sums the bias gradient in its epilogue: two Triton matrix-product kernels instead
of two cuBLAS products and two memory-bound passes (docs/benchmarks.md, part 97).

``fused_mlp(x, w1, b1, w2, b2, name)``: x [..., C]; w1 [4C, C], b1 [4C], w2 [C, 4C], b2 [C].
Computed in half precision (the autocast dtype, or x's own), with the same roundings as the
MLP with bias_activation.py: h = x W1^T rounded, act = act(h + b1) in float32 rounded; the
backward rounds g W2 before multiplying by act'(h + b1) in float32, whose float32 column sums
are b1's gradient. The other products (the second one forward; both weights' gradients and x's
gradient) are torch's. ``supported(x, hidden)`` says where it runs: a CUDA GPU with Triton,
a half-precision compute dtype, and widths that are multiples of BLOCK_K.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from .bias_activation import ACTIVATIONS, as_dtype
from .triton_support import TRITON, tl, triton

try:
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # Triton < 3.4
    TensorDescriptor = None

# One program computes a BLOCK_M x BLOCK_N tile of the [M, 4C] product; programs go down GROUP_M
# row tiles before the next column tile, so that neighbours share their operands in L2
BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, WARPS, STAGES = 128, 256, 64, 8, 8, 3
HALF = (torch.float16, torch.bfloat16)


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype the products run in: autocast's on x's device where it is on, x's otherwise."""
    kind = x.device.type
    if torch.is_autocast_enabled(kind):
        return torch.get_autocast_dtype(kind)
    return x.dtype


def supported(x: torch.Tensor, width: int, hidden: int) -> bool:
    """Whether fused_mlp runs for x [..., width] with ``hidden`` units: CUDA, Triton, gradients on,
    a half-precision compute dtype and both widths multiples of BLOCK_K."""
    return (x.is_cuda and TRITON and torch.is_grad_enabled() and compute_dtype(x) in HALF
            and width % BLOCK_K == 0 and hidden % BLOCK_K == 0)


def tma_here(x: torch.Tensor) -> bool:
    """Whether x's GPU has TMA (Hopper and later) and Triton its host-side descriptors."""
    return TensorDescriptor is not None and x.is_cuda and torch.cuda.get_device_capability(x.device)[0] >= 9


def _rows(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """t [..., K] as a contiguous [M, K] matrix in dtype."""
    return as_dtype(t.reshape(-1, t.shape[-1]), dtype).contiguous()


class _FusedMLP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w1, b1, w2, b2, name):
        dtype = compute_dtype(x)
        rows, w1h, w2h = _rows(x, dtype), as_dtype(w1, dtype), as_dtype(w2, dtype)  # [M, C], [4C, C], [C, 4C]
        h, act = torch.ops.clipscratch.linear_activation(rows, w1h, b1, name == "quick_gelu")  # 2 x [M, 4C]
        y = torch.addmm(as_dtype(b2, dtype), act, w2h.t())  # [M, C]
        ctx.save_for_backward(rows, w1h, b1, h, act, w2h)
        ctx.name, ctx.x_dtype, ctx.dtypes = name, x.dtype, (w1.dtype, b1.dtype, w2.dtype, b2.dtype)
        return y.view(*x.shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx, grad):
        rows, w1h, b1, h, act, w2h = ctx.saved_tensors
        needs_x, needs_w1, needs_b1, needs_w2, needs_b2, _ = ctx.needs_input_grad
        w1_dtype, b1_dtype, w2_dtype, b2_dtype = ctx.dtypes
        g = _rows(grad, rows.dtype)  # [M, C]
        grad_x = grad_w1 = grad_b1 = grad_w2 = grad_b2 = None
        if needs_w2:
            grad_w2 = as_dtype(g.t() @ act, w2_dtype)  # [C, 4C]
        if needs_b2:
            grad_b2 = as_dtype(g.sum(0, dtype=torch.float32), b2_dtype)  # [C]
        if needs_x or needs_w1 or needs_b1:
            grad_h, sums = torch.ops.clipscratch.product_activation_backward(g, w2h, h, b1, ctx.name == "quick_gelu")
            grad_b1 = as_dtype(sums, b1_dtype) if needs_b1 else None  # [4C]
            if needs_w1:
                grad_w1 = as_dtype(grad_h.t() @ rows, w1_dtype)  # [4C, C]
            if needs_x:
                grad_x = as_dtype(grad_h @ w1h, ctx.x_dtype).view(grad.shape)  # [..., C]
        return grad_x, grad_w1, grad_b1, grad_w2, grad_b2, None


def fused_mlp(x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor,
              name: str) -> torch.Tensor:
    """act(x w1^T + b1) w2^T + b2 [..., C], the activation in the products' epilogues (module docstring);
    run it where ``supported`` says so."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; use one of {', '.join(ACTIVATIONS)}")
    return _FusedMLP.apply(x, w1, b1, w2, b2, name)


def launch(kernel, a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor, h: Optional[torch.Tensor], quick: bool,
           block_m: int = BLOCK_M, block_n: int = BLOCK_N, block_k: int = BLOCK_K, group_m: int = GROUP_M,
           warps: int = WARPS, stages: int = STAGES) -> Tuple[torch.Tensor, torch.Tensor]:
    """Run ``kernel`` (product_activation_kernel, or torch.library.wrap_triton of it) on a [M, K] and
    b [K, N] (any strides), both in one half dtype. Forward (h None): (h = a b rounded, act(h + bias)).
    Backward (h given, [M, N]): (act'(h + bias) times a b rounded, its column sums [N] in float32)."""
    M, K = a.shape
    N = b.shape[1]
    tiles_m = triton.cdiv(M, block_m)
    out = torch.empty((M, N), dtype=a.dtype, device=a.device)
    if h is None:
        h_out, partial = torch.empty_like(out), out  # partial: unused
    else:
        h_out, partial = h, torch.empty((tiles_m, N), dtype=torch.float32, device=a.device)  # each tile's column sums
    grid = (tiles_m * triton.cdiv(N, block_n),)
    kernel[grid](a, b, bias, h_out, out, partial, M, N, K, a.stride(0), a.stride(1), b.stride(0), b.stride(1),
                 BACKWARD=h is not None, QUICK=quick, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
                 GROUP_M=group_m, num_warps=warps, num_stages=stages)
    return (h_out, out) if h is None else (out, partial.sum(0))


def launch_tma(kernel, a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor, h: Optional[torch.Tensor], quick: bool,
               b_transposed: bool, block_m: int = 128, block_n: int = 256, block_k: int = 64, group_m: int = GROUP_M,
               warps: int = 8, stages: int = 3, programs: Optional[int] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """As ``launch`` with product_activation_tma_kernel: a [M, K] contiguous; b [K, N] contiguous, or
    (b_transposed) its transpose [N, K] contiguous."""
    M, K = a.shape
    N = b.shape[0] if b_transposed else b.shape[1]
    tiles_m = triton.cdiv(M, block_m)
    out = torch.empty((M, N), dtype=a.dtype, device=a.device)
    if h is None:
        h_out, partial = torch.empty_like(out), out  # partial: unused
    else:
        h_out, partial = h, torch.empty((tiles_m, N), dtype=torch.float32, device=a.device)
    if programs is None:
        programs = torch.cuda.get_device_properties(a.device).multi_processor_count if a.is_cuda else 4
    programs = min(programs, tiles_m * triton.cdiv(N, block_n))
    a_desc = TensorDescriptor.from_tensor(a, [block_m, block_k])
    b_desc = TensorDescriptor.from_tensor(b, [block_n, block_k] if b_transposed else [block_k, block_n])
    h_desc = TensorDescriptor.from_tensor(h_out, [block_m, block_n // 2])
    out_desc = TensorDescriptor.from_tensor(out, [block_m, block_n // 2])
    kernel[(programs,)](a_desc, b_desc, h_desc, out_desc, bias, partial, M, N, K, B_TRANSPOSED=b_transposed,
                        BACKWARD=h is not None, QUICK=quick, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
                        GROUP_M=group_m, PROGRAMS=programs, num_warps=warps, num_stages=stages)
    return (h_out, out) if h is None else (out, partial.sum(0))


if TRITON:
    @triton.jit
    def product_activation_kernel(a_ptr, b_ptr, bias_ptr, h_ptr, out_ptr, partial_ptr, M, N, K,
                                  stride_am, stride_ak, stride_bk, stride_bn,
                                  BACKWARD: tl.constexpr, QUICK: tl.constexpr, BLOCK_M: tl.constexpr,
                                  BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
        # tile (i, j) of the [M, N] product; K is a multiple of BLOCK_K (supported())
        pid = tl.program_id(0)
        tiles_m, tiles_n = tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N)
        per_group = GROUP_M * tiles_n
        first_m = (pid // per_group) * GROUP_M
        group_m = min(tiles_m - first_m, GROUP_M)
        tile_m = first_m + (pid % per_group) % group_m
        tile_n = (pid % per_group) // group_m
        rows = tile_m * BLOCK_M + tl.arange(0, BLOCK_M)  # [BLOCK_M]
        cols = tile_n * BLOCK_N + tl.arange(0, BLOCK_N)  # [BLOCK_N]
        ks = tl.arange(0, BLOCK_K)
        # rows and columns past the edge read row/column 0 (their results are never stored)
        a_ptrs = a_ptr + (rows % M).to(tl.int64)[:, None] * stride_am + ks[None, :] * stride_ak  # [BLOCK_M, BLOCK_K]
        b_ptrs = b_ptr + ks[:, None] * stride_bk + (cols % N)[None, :] * stride_bn  # [BLOCK_K, BLOCK_N]
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        for _ in range(0, K, BLOCK_K):
            acc = tl.dot(tl.load(a_ptrs), tl.load(b_ptrs), acc)
            a_ptrs += BLOCK_K * stride_ak
            b_ptrs += BLOCK_K * stride_bk
        ok = (rows < M)[:, None] & (cols < N)[None, :]  # [BLOCK_M, BLOCK_N]
        offsets = rows.to(tl.int64)[:, None] * N + cols[None, :]
        product = acc.to(out_ptr.dtype.element_ty)  # rounded, as a product written to memory is
        bias = tl.load(bias_ptr + cols, mask=cols < N, other=0.0).to(tl.float32)
        if BACKWARD:
            z = tl.load(h_ptr + offsets, mask=ok, other=0.0).to(tl.float32) + bias[None, :]
        else:
            tl.store(h_ptr + offsets, product, mask=ok)
            z = product.to(tl.float32) + bias[None, :]
        if QUICK:  # 1.702: bias_activation.QUICK_GELU_SCALE (a jit function reads no Python globals)
            s = tl.sigmoid(1.702 * z)
            if BACKWARD:
                value = s * (1.0 + 1.702 * z * (1.0 - s))  # act'(z)
            else:
                value = z * s
        else:
            cdf = 0.5 * (1.0 + tl.erf(z * 0.7071067811865476))
            if BACKWARD:
                value = cdf + z * tl.exp(-0.5 * z * z) * 0.3989422804014327  # Phi(z) + z phi(z)
            else:
                value = z * cdf
        if BACKWARD:
            value = tl.where(ok, product.to(tl.float32) * value, 0.0)  # grad * act'(z)
            tl.store(partial_ptr + tile_m * N + cols, tl.sum(value, axis=0), mask=cols < N)
        tl.store(out_ptr + offsets, value.to(out_ptr.dtype.element_ty), mask=ok)

    @triton.jit
    def _activation_epilogue(product, z, ok, QUICK: tl.constexpr, BACKWARD: tl.constexpr):
        """act(z), or (BACKWARD) product * act'(z) where ok and 0 elsewhere, in float32."""
        if QUICK:  # 1.702: bias_activation.QUICK_GELU_SCALE (a jit function reads no Python globals)
            s = tl.sigmoid(1.702 * z)
            if BACKWARD:
                value = s * (1.0 + 1.702 * z * (1.0 - s))  # act'(z)
            else:
                value = z * s
        else:
            cdf = 0.5 * (1.0 + tl.erf(z * 0.7071067811865476))
            if BACKWARD:
                value = cdf + z * tl.exp(-0.5 * z * z) * 0.3989422804014327  # Phi(z) + z phi(z)
            else:
                value = z * cdf
        if BACKWARD:
            value = tl.where(ok, product.to(tl.float32) * value, 0.0)
        return value

    @triton.jit
    def _tile_position(tile, tiles_m, tiles_n, GROUP_M: tl.constexpr):
        per_group = GROUP_M * tiles_n
        first_m = (tile // per_group) * GROUP_M
        group_m = min(tiles_m - first_m, GROUP_M)
        return first_m + (tile % per_group) % group_m, (tile % per_group) // group_m

    @triton.jit
    def _epilogue_half(product, off_m, off_n, tile_m, h_desc, out_desc, bias_ptr, partial_ptr, M, N,
                       BACKWARD: tl.constexpr, QUICK: tl.constexpr, BLOCK_M: tl.constexpr, HALF_N: tl.constexpr):
        cols = off_n + tl.arange(0, HALF_N)
        bias = tl.load(bias_ptr + cols, mask=cols < N, other=0.0).to(tl.float32)
        if BACKWARD:
            z = h_desc.load([off_m, off_n]).to(tl.float32) + bias[None, :]
        else:
            h_desc.store([off_m, off_n], product)
            z = product.to(tl.float32) + bias[None, :]
        rows = off_m + tl.arange(0, BLOCK_M)
        value = _activation_epilogue(product, z, (rows < M)[:, None], QUICK, BACKWARD)
        if BACKWARD:
            tl.store(partial_ptr + tile_m * N + cols, tl.sum(value, axis=0), mask=cols < N)
        out_desc.store([off_m, off_n], value.to(product.dtype))

    @triton.jit
    def product_activation_tma_kernel(a_desc, b_desc, h_desc, out_desc, bias_ptr, partial_ptr, M, N, K,
                                      B_TRANSPOSED: tl.constexpr, BACKWARD: tl.constexpr, QUICK: tl.constexpr,
                                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                                      GROUP_M: tl.constexpr, PROGRAMS: tl.constexpr):
        # persistent: PROGRAMS programs take the tiles in turn, the loads of the next tile overlapping this one's
        # epilogue; a, b, h and out through TMA descriptors (zeros read past the edges, stores clipped)
        tiles_m, tiles_n = tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N)
        k_tiles = tl.cdiv(K, BLOCK_K)
        for tile in tl.range(tl.program_id(0), tiles_m * tiles_n, PROGRAMS, flatten=True):
            tile_m, tile_n = _tile_position(tile, tiles_m, tiles_n, GROUP_M)
            off_m, off_n = tile_m * BLOCK_M, tile_n * BLOCK_N
            acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
            for ki in range(k_tiles):
                a = a_desc.load([off_m, ki * BLOCK_K])  # [BLOCK_M, BLOCK_K]
                if B_TRANSPOSED:  # b given as its transpose [N, K] (the forward's w1)
                    b = b_desc.load([off_n, ki * BLOCK_K]).T  # [BLOCK_K, BLOCK_N]
                else:
                    b = b_desc.load([ki * BLOCK_K, off_n])
                acc = tl.dot(a, b, acc)
            product = acc.to(out_desc.dtype)  # rounded, as a product written to memory is
            # the epilogue in two halves of BLOCK_N / 2 columns: half the registers
            product = tl.permute(tl.reshape(product, (BLOCK_M, 2, BLOCK_N // 2)), (0, 2, 1))
            left, right = tl.split(product)
            _epilogue_half(left, off_m, off_n, tile_m, h_desc, out_desc, bias_ptr, partial_ptr, M, N,
                           BACKWARD, QUICK, BLOCK_M, BLOCK_N // 2)
            _epilogue_half(right, off_m, off_n + BLOCK_N // 2, tile_m, h_desc, out_desc, bias_ptr, partial_ptr, M, N,
                           BACKWARD, QUICK, BLOCK_M, BLOCK_N // 2)

    @torch.library.triton_op("clipscratch::linear_activation", mutates_args=())
    def _forward_op(x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor,
                    quick: bool) -> Tuple[torch.Tensor, torch.Tensor]:
        """(h = x w1^T, act(h + b1)) for x [M, C], w1 [4C, C]: the kernel as a torch operator."""
        if tma_here(x):
            return launch_tma(torch.library.wrap_triton(product_activation_tma_kernel), x, w1, b1, None, quick, True)
        return launch(torch.library.wrap_triton(product_activation_kernel), x, w1.t(), b1, None, quick)

    @torch.library.triton_op("clipscratch::product_activation_backward", mutates_args=())
    def _backward_op(g: torch.Tensor, w2: torch.Tensor, h: torch.Tensor, b1: torch.Tensor,
                     quick: bool) -> Tuple[torch.Tensor, torch.Tensor]:
        """(grad_h = (g w2) act'(h + b1), its column sums) for g [M, C], w2 [C, 4C], h [M, 4C]."""
        if tma_here(g):
            return launch_tma(torch.library.wrap_triton(product_activation_tma_kernel), g, w2, b1, h, quick, False)
        return launch(torch.library.wrap_triton(product_activation_kernel), g, w2, b1, h, quick)
