"""Packed text: the captions of a batch as one sequence of their real tokens.

A batch of token ids [B, L] (end-of-text, the largest id, ends each caption; zeros after it)
becomes ``PackedTokens``: the N = sum of the captions' lengths tokens, caption after caption,
with what attention needs to keep each caption to itself. ``pack_tokens`` builds it wherever
the ids are: in the training loop on the host, before the batch goes to the GPU, so that the
compiled step sees no data-dependent shape and never waits for the GPU; in the model itself
(``CLIP.set_text_packing``) for a plain [B, L] batch.

``packed_attention`` is causal attention within each caption: flash attention's
variable-length kernel on a CUDA GPU in half precision (no padding at all), or the packed q/k/v
scattered into the padded layout [B, T] for ``scaled_dot_product_attention`` (the zeros after a
caption's end come after every real query, so they are never attended): its memory-efficient
kernel on a CUDA GPU, whichever it picks elsewhere. By default varlen for a packing filled for
CUDA graphs, the padded layout otherwise (``attention_kernel``).
"""
from __future__ import annotations

import contextlib
import inspect
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel


class PackedTokens(NamedTuple):
    """B captions of lengths l_b (through the end token) packed into N = sum(l_b) tokens, and
    with ``pack_tokens(..., bucket=K)`` filler tokens after them (below)."""

    ids: torch.Tensor  # [N] long: token ids, caption after caption
    positions: torch.Tensor  # [N] long: each token's position in its caption
    starts: torch.Tensor  # [R + 1] int32: where each row (caption or filler) begins; starts[R] = N (flash's cu_seqlens)
    slots: torch.Tensor  # [N] long: r * T + t, the token's place in the padded layout [R, T]
    layout: torch.Tensor  # [R, T] bool: the padded layout's real tokens (T >= the longest caption)
    ends: torch.Tensor  # [B] long: each caption's end-of-text token in the packed sequence

    def to(self, device, non_blocking: bool = False) -> "PackedTokens":
        """On ``device``. From the host to a GPU without waiting: through pinned memory (a copy
        from pageable memory would first wait for everything queued on the stream)."""
        pin = non_blocking and torch.device(device).type == "cuda" and not self.ids.is_cuda
        return _vary(PackedTokens(*((t.pin_memory() if pin else t).to(device, non_blocking=non_blocking) for t in self)))


def _vary(packed: PackedTokens) -> PackedTokens:
    """Tell torch.compile up front that N and T change from batch to batch, so that it compiles
    one graph for all lengths instead of one for the first batch and a second one on the next.
    Packed inside a compiled model (a plain [B, L] batch with ``CLIP.set_text_packing``) there is
    nothing to tell: torch.compile traces the packing itself."""
    if torch.compiler.is_compiling():
        return packed
    for t in (packed.ids, packed.positions, packed.slots):
        torch._dynamo.maybe_mark_dynamic(t, 0)  # N
    torch._dynamo.maybe_mark_dynamic(packed.layout, 1)  # T
    return packed


def pack_tokens(tokens: torch.Tensor, bucket: int = 0, context_length: int = 77) -> PackedTokens:
    """Token ids [B, L] -> PackedTokens (on the ids' device; on a GPU this waits for it once).

    ``bucket=K`` (for CUDA graphs, which replay one recording per shape): the sequence is filled
    up to a multiple of K tokens and T is the text tower's ``context_length``, so that a few
    shapes cover every batch (flash attention's varlen kernel costs the same for any T up to its
    128-token block: only the captions' own lengths count). The fillers are K more rows of the
    layout: as many as needed hold one token each (a caption of its own, attending to itself),
    the rest are empty; no caption sees them and nothing reads their outputs, so the captions'
    features are what they are unfilled."""
    B = len(tokens)
    lengths = tokens.argmax(dim=-1) + 1  # [B]: through the end-of-text token
    T = int(lengths.max())
    ids = tokens[:, :T]  # [B, T]
    if bucket:
        T = max(T, context_length)  # longer: the text tower refuses it in one line
        filler = -int(lengths.sum()) % bucket
        lengths = torch.cat([lengths, (torch.arange(bucket, device=tokens.device) < filler).to(lengths.dtype)])
        ids = F.pad(ids, (0, T - ids.shape[1], 0, bucket))  # [B + K, T]: filler ids 0
    layout = torch.arange(T, device=tokens.device) < lengths[:, None]  # [R, T]
    slots = layout.flatten().nonzero().squeeze(1)  # [N]
    starts = torch.zeros(len(lengths) + 1, dtype=torch.int32, device=tokens.device)
    starts[1:] = lengths.cumsum(0)
    ends = starts[1 : B + 1].long() - 1  # [B]
    return _vary(PackedTokens(ids.reshape(-1)[slots], slots % T, starts, slots, layout, ends))


def _flash_varlen():
    """torch's variable-length flash attention as f(q, k, v, starts, longest) -> causal output,
    or None where this torch has none (its causal argument changed name across releases)."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    params = inspect.signature(varlen_attn).parameters
    if "window_size" in params:
        return lambda q, k, v, starts, T: varlen_attn(q, k, v, starts, starts, T, T, window_size=(-1, 0))
    if "is_causal" in params:
        return lambda q, k, v, starts, T: varlen_attn(q, k, v, starts, starts, T, T, is_causal=True)
    return None


_VARLEN = _flash_varlen()


def uses_flash_varlen(x: torch.Tensor) -> bool:
    return _VARLEN is not None and x.is_cuda and x.dtype in (torch.float16, torch.bfloat16)


KERNELS = ("auto", "varlen", "efficient", "sdpa")


def attention_kernel(kernel: str, qkv: torch.Tensor, packed: PackedTokens) -> str:
    """The kernel that ``packed_attention`` runs for ``kernel``: "varlen" where flash's varlen
    kernel runs (CUDA, half precision), "efficient" on a CUDA GPU, "sdpa" otherwise. "auto" takes
    varlen for a packing filled for CUDA graphs (T is the whole context there, which costs the
    padded layout, not varlen) and efficient for a plain one (about half of varlen's GPU time at
    caption lengths: docs/benchmarks.md, parts 48-53)."""
    if kernel == "auto":
        filled = packed.layout.shape[0] > packed.ends.shape[0]
        kernel = "varlen" if filled else "efficient"
    if kernel == "varlen" and not uses_flash_varlen(qkv):
        kernel = "efficient"
    if kernel == "efficient" and not qkv.is_cuda:
        kernel = "sdpa"
    return kernel


def packed_attention(qkv: torch.Tensor, heads: int, packed: PackedTokens, kernel: str = "auto") -> torch.Tensor:
    """Causal self-attention of each caption over its own tokens: packed qkv [N, 3C] -> [N, C],
    by flash's varlen kernel on the packed tokens, or in the padded layout [R, T] by SDPA's
    memory-efficient kernel or whichever SDPA picks (``kernel``: KERNELS, attention_kernel)."""
    N, C = qkv.shape[0], qkv.shape[1] // 3
    R, T = packed.layout.shape
    kernel = attention_kernel(kernel, qkv, packed)
    if kernel == "varlen":
        q, k, v = qkv.view(N, 3, heads, C // heads).unbind(1)  # 3 x [N, H, D]
        return _VARLEN(q, k, v, packed.starts, T).reshape(N, C)
    padded = qkv.new_zeros(R * T, 3 * C).index_copy(0, packed.slots, qkv)  # [R*T, 3C]
    q, k, v = padded.view(R, T, 3, heads, C // heads).permute(2, 0, 3, 1, 4).unbind(0)  # 3 x [R, H, T, D]
    with sdpa_kernel(SDPBackend.EFFICIENT_ATTENTION) if kernel == "efficient" else contextlib.nullcontext():
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # [R, H, T, D]
    return y.transpose(1, 2).reshape(R * T, C)[packed.slots]  # [N, C]
