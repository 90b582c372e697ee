"""The ViT image tower of CLIP."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import VisionConfig
from .layers import LayerNorm, Transformer


class VisionTransformer(nn.Module):
    """Patchify -> [CLS] + patches + positions -> ln_pre -> blocks -> ln_post(CLS) @ proj."""

    def __init__(self, cfg: VisionConfig, embed_dim: int, activation: str):
        super().__init__()
        width, patch = cfg.width, cfg.patch_size
        self.image_size = cfg.image_size
        self.patch_size = patch
        self.grid_size = cfg.image_size // patch
        self.patch_dropout = cfg.patch_dropout
        scale = width ** -0.5
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch, stride=patch, bias=False)  # held as OpenAI's; see patchify
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        pos_std = cfg.pos_embed_std if cfg.pos_embed_std is not None else scale
        self.positional_embedding = nn.Parameter(pos_std * torch.randn(self.grid_size ** 2 + 1, width))
        self.ln_pre = LayerNorm(width)
        self.transformer = Transformer(width, cfg.layers, cfg.num_heads, cfg.mlp_ratio, activation)
        self.ln_post = LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, embed_dim))

    def init_weights(self) -> None:
        self.transformer.init_weights()

    def patchify(self, images: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, H, W] -> patch embeddings [B, N, width]: conv1 (a p x p convolution of
        stride p) as the matrix product it is, patches [B, N, 3*p*p] @ weight [width, 3*p*p]^T.
        The same numbers as the convolution; on a GPU several times faster (cuDNN's convolution
        kernels spent 9 of a ViT-B/32 step's 61 ms on it: docs/benchmarks.md)."""
        p = self.patch_size
        B, _, H, W = images.shape
        gh, gw = H // p, W // p  # a convolution of stride p drops what is left over
        x = images[:, :, : gh * p, : gw * p].to(self.conv1.weight.dtype)
        x = x.reshape(B, 3, gh, p, gw, p).permute(0, 2, 4, 1, 3, 5).reshape(B, gh * gw, 3 * p * p)  # [B, N, 3*p*p]
        return F.linear(x, self.conv1.weight.flatten(1))  # [B, N, width]

    def tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, H, W] -> token sequence after the last block [B, 1 + N, width]."""
        x = self.patchify(images)  # [B, N, width]
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)  # [B, 1, width]
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)  # [B, 1 + N, width]
        if self.training and self.patch_dropout > 0:
            x = self._drop_patches(x)
        x = self.ln_pre(x)
        return self.transformer(x)  # [B, 1 + N, width]

    def _drop_patches(self, x: torch.Tensor) -> torch.Tensor:
        """FLIP: keep a random subset of the patch tokens (the CLS token is always kept)."""
        B, T, C = x.shape
        keep = max(1, int((T - 1) * (1 - self.patch_dropout)))
        idx = torch.rand(B, T - 1, device=x.device).argsort(dim=1)[:, :keep]  # [B, keep]
        patches = x[:, 1:].gather(1, idx.unsqueeze(-1).expand(-1, -1, C))  # [B, keep, C]
        return torch.cat([x[:, :1], patches], dim=1)

    def output_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Every token after ``ln_post`` [B, 1 + N, width], before the projection: what a
        captioner's cross-attention reads."""
        return self.ln_post(self.tokens(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.tokens(images)
        x = self.ln_post(x[:, 0])  # [B, width]
        return x @ self.proj  # [B, embed_dim]
