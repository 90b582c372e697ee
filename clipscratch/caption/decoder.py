"""A GPT-2-style caption decoder that reads CLIP image features.

Parameter names follow GPT-2 as ``transformers`` saves it (``wte``, ``wpe``, ``h.{i}.ln_1``,
``h.{i}.attn.c_attn`` ...; its cross-attention layout ``h.{i}.ln_cross_attn``,
``h.{i}.crossattention.q_attn / c_attn / c_proj``), so ``convert/gpt2.py`` maps its weights
key for key. The image enters two ways:

* a prefix (ClipCap): the CLIP image embedding [B, E] -> ``prefix_length`` token embeddings
  [B, P, C] by a small MLP, placed before the caption tokens;
* cross-attention in every block to CLIP's image tokens [B, T, D] (projected to the width C),
  each gated by a learned scalar that starts at 0, so a pretrained language model is
  unchanged at the start.

Three parameter-efficient ways to train it on a frozen language model (``peft.py``): bottleneck
adapters after the cross-attention, prefix tuning (learned keys and values in every layer), LoRA
on the self-attention projections. Activations are ``[B, T, C]``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .peft import Adapter, LoRALinear


@dataclass(frozen=True)
class DecoderConfig:
    vocab_size: int = 49408  # CLIP's BPE vocabulary (clipscratch.tokenize); GPT-2's is 50257
    context_length: int = 40  # positions, the image prefix included
    width: int = 256
    layers: int = 4
    heads: int = 4
    layer_norm_eps: float = 1e-5
    cross_attention: bool = True
    image_width: int = 0  # width of the image tokens cross-attention reads (0: already `width`)
    image_embed_dim: int = 0  # CLIP embedding size for the prefix (0: no prefix)
    prefix_length: int = 4  # image prefix tokens
    method: str = "none"  # none | adapter | prefix | lora (peft.py)
    adapter_dim: int = 32
    prefix_tokens: int = 8  # prefix tuning: learned keys and values per layer
    lora_rank: int = 8
    lora_alpha: float = 16.0
    bos_token_id: int = 49406  # <|startoftext|>
    eos_token_id: int = 49407  # <|endoftext|>


class SelfAttention(nn.Module):
    """Causal multi-head attention with GPT-2's fused ``c_attn`` (C -> 3C), optional learned
    prefix keys/values (prefix tuning) and LoRA (in peft.LoRALinear)."""

    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        C = cfg.width
        self.heads = cfg.heads
        linear = (lambda i, o: LoRALinear(i, o, cfg.lora_rank, cfg.lora_alpha)) if cfg.method == "lora" else nn.Linear
        self.c_attn = linear(C, 3 * C)
        self.c_proj = linear(C, C)
        self.prefix = None
        if cfg.method == "prefix":  # [2, heads, P, head_dim]: keys and values every position may read
            self.prefix = nn.Parameter(torch.randn(2, cfg.heads, cfg.prefix_tokens, C // cfg.heads) * 0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)  # 3 x [B, T, C]
        q, k, v = (t.view(B, T, self.heads, C // self.heads).transpose(1, 2) for t in (q, k, v))  # [B, H, T, D]
        if self.prefix is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            P = self.prefix.shape[2]
            k = torch.cat([self.prefix[0].expand(B, -1, -1, -1).to(k.dtype), k], dim=2)  # [B, H, P + T, D]
            v = torch.cat([self.prefix[1].expand(B, -1, -1, -1).to(v.dtype), v], dim=2)
            mask = torch.ones(T, P + T, dtype=torch.bool, device=x.device).tril(diagonal=P)  # prefix always visible
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.c_proj(y.transpose(1, 2).reshape(B, T, C))  # [B, T, C]


class CrossAttention(nn.Module):
    """Queries from the text, keys and values from the image tokens (GPT-2's q_attn / c_attn)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q_attn = nn.Linear(width, width)
        self.c_attn = nn.Linear(width, 2 * width)
        self.c_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        H, D = self.heads, C // self.heads
        q = self.q_attn(x).view(B, T, H, D).transpose(1, 2)  # [B, H, T, D]
        k, v = self.c_attn(image).split(C, dim=2)  # 2 x [B, N, C]
        k, v = (t.view(B, -1, H, D).transpose(1, 2) for t in (k, v))  # [B, H, N, D]
        y = F.scaled_dot_product_attention(q, k, v)  # [B, H, T, D]
        return self.c_proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.c_fc = nn.Linear(width, 4 * width)
        self.c_proj = nn.Linear(4 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))  # GPT-2's "gelu_new"


class Block(nn.Module):
    """x + attn(ln_1(x)); + gate * crossattention(ln_cross_attn(x), image) (+ adapter); + mlp(ln_2(x))."""

    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        C, eps = cfg.width, cfg.layer_norm_eps
        self.ln_1 = nn.LayerNorm(C, eps=eps)
        self.attn = SelfAttention(cfg)
        if cfg.cross_attention:
            self.ln_cross_attn = nn.LayerNorm(C, eps=eps)
            self.crossattention = CrossAttention(C, cfg.heads)
            self.cross_gate = nn.Parameter(torch.zeros(()))  # 0: the language model as it was
        self.adapter = Adapter(C, cfg.adapter_dim) if cfg.method == "adapter" else None
        self.ln_2 = nn.LayerNorm(C, eps=eps)
        self.mlp = MLP(C)

    def forward(self, x: torch.Tensor, image: Optional[torch.Tensor]) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))  # [B, T, C]
        if image is not None and hasattr(self, "crossattention"):
            x = x + self.cross_gate * self.crossattention(self.ln_cross_attn(x), image)
        if self.adapter is not None:
            x = self.adapter(x)  # bottleneck with its own residual
        return x + self.mlp(self.ln_2(x))


class CaptionDecoder(nn.Module):
    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.config = cfg
        C = cfg.width
        self.wte = nn.Embedding(cfg.vocab_size, C)
        self.wpe = nn.Embedding(cfg.context_length, C)
        self.h = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        self.ln_f = nn.LayerNorm(C, eps=cfg.layer_norm_eps)
        self.image_proj = nn.Linear(cfg.image_width, C) if cfg.cross_attention and cfg.image_width not in (0, C) else None
        self.prefix_map = None
        if cfg.image_embed_dim:  # ClipCap's MLP: E -> P*C/2 -> P*C
            hidden = cfg.prefix_length * C // 2
            self.prefix_map = nn.Sequential(nn.Linear(cfg.image_embed_dim, hidden), nn.Tanh(), nn.Linear(hidden, cfg.prefix_length * C))
        self.apply(self._init)

    @staticmethod
    def _init(module: nn.Module) -> None:
        """GPT-2's initialisation: normal(0.02) weights, zero biases, unit LayerNorms."""
        if isinstance(module, (nn.Linear, nn.Embedding)) and not getattr(module, "peft", False):
            nn.init.normal_(module.weight, std=0.02)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)

    @property
    def image_prefix_length(self) -> int:
        return self.config.prefix_length if self.prefix_map is not None else 0

    def image_inputs(self, embedding: Optional[torch.Tensor], tokens: Optional[torch.Tensor]):
        """CLIP image embedding [B, E] and image tokens [B, N, D] -> (prefix [B, P, C] or None,
        cross-attention memory [B, N, C] or None)."""
        prefix = None
        if self.prefix_map is not None and embedding is not None:
            prefix = self.prefix_map(embedding).view(embedding.shape[0], self.config.prefix_length, -1)
        memory = None
        if self.config.cross_attention and tokens is not None:
            memory = self.image_proj(tokens) if self.image_proj is not None else tokens
        return prefix, memory

    def forward(self, input_ids: torch.Tensor, prefix: Optional[torch.Tensor] = None,
                memory: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Token ids [B, T] (after the image prefix [B, P, C], if any) -> logits [B, T, vocab]
        for the caption positions."""
        x = self.wte(input_ids)  # [B, T, C]
        P = 0
        if prefix is not None:
            P = prefix.shape[1]
            x = torch.cat([prefix.to(x.dtype), x], dim=1)  # [B, P + T, C]
        if x.shape[1] > self.config.context_length:
            raise ValueError(f"{x.shape[1]} positions, more than the decoder's context_length={self.config.context_length}")
        x = x + self.wpe(torch.arange(x.shape[1], device=x.device))
        for block in self.h:
            x = block(x, memory)
        x = self.ln_f(x[:, P:])  # [B, T, C]
        return x @ self.wte.weight.T  # tied output embedding, as GPT-2's lm_head
