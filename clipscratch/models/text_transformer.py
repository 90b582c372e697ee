"""The causal text transformer of CLIP."""
from __future__ import annotations

from typing import Union

import torch
from torch import nn

from ..errors import TextTooLongError
from .config import TextConfig
from .layers import LayerNorm, Transformer
from .packing import PackedTokens, pack_tokens


class TextTransformer(nn.Module):
    """Tokens -> embeddings + positions -> causal blocks -> ln_final -> feature at EOT @ projection.

    The end-of-text token has the largest id, so ``tokens.argmax(-1)`` finds it.
    Because attention is causal, padding after EOT never changes the result, so a
    batch may be trimmed to its longest caption (any length <= context_length), or packed
    (packing.py): given as ``PackedTokens``, or packed here when ``pack`` is on.
    """

    def __init__(self, cfg: TextConfig, embed_dim: int, activation: str):
        super().__init__()
        self.context_length = cfg.context_length
        self.vocab_size = cfg.vocab_size
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.width)
        self.positional_embedding = nn.Parameter(torch.empty(cfg.context_length, cfg.width))
        self.transformer = Transformer(cfg.width, cfg.layers, cfg.heads, cfg.mlp_ratio, activation)
        self.ln_final = LayerNorm(cfg.width)
        self.text_projection = nn.Parameter(torch.empty(cfg.width, embed_dim))
        self.pack = False  # CLIP.set_text_packing: each caption costs its own length (forward_packed)

    def init_weights(self) -> None:
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        self.transformer.init_weights()
        nn.init.normal_(self.text_projection, std=self.transformer.width ** -0.5)

    def fit_context(self, text: torch.Tensor) -> torch.Tensor:
        """Token ids [B, T] -> [B, min(T, context_length)]. Ids padded beyond this model's
        context (``tokenize`` pads to 77) are cut when only padding lies past it: exact, as
        nothing after the end token reaches the pooled feature."""
        if text.shape[1] <= self.context_length:
            return text
        if text[:, self.context_length :].any():
            raise self._too_long(int((text != 0).sum(1).max()))
        return text[:, : self.context_length]

    def _too_long(self, longest: int) -> TextTooLongError:
        return TextTooLongError(f"a caption has {longest} tokens, more than this model's context_length={self.context_length}; "
                                f"tokenize with clipscratch.tokenize(texts, context_length={self.context_length}, truncate=True)")

    def tokens(self, text: torch.Tensor) -> torch.Tensor:
        """Token ids [B, T] -> final hidden states [B, T', width] (after ln_final), T' = min(T, context)."""
        text = self.fit_context(text)
        T = text.shape[1]
        x = self.token_embedding(text) + self.positional_embedding[:T]  # [B, T, width]
        x = self.transformer(x, causal=True)  # [B, T, width]
        return self.ln_final(x)

    def forward(self, text: Union[torch.Tensor, PackedTokens]) -> torch.Tensor:
        if isinstance(text, PackedTokens):
            return self.forward_packed(text)
        text = self.fit_context(text)
        if self.pack:
            return self.forward_packed(pack_tokens(text))
        x = self.tokens(text)  # [B, T, width]
        eot = x[torch.arange(x.shape[0], device=x.device), text.argmax(dim=-1)]  # [B, width]
        return eot @ self.text_projection  # [B, embed_dim]

    def forward_packed(self, packed: PackedTokens) -> torch.Tensor:
        """The same features as ``forward``, computed on the real tokens only: embeddings,
        LayerNorms, MLPs and projections run on the packed sequence [N, width], attention on
        each caption's own tokens (packing.packed_attention)."""
        if packed.layout.shape[1] > self.context_length:
            raise self._too_long(packed.layout.shape[1])
        x = self.token_embedding(packed.ids) + self.positional_embedding[packed.positions]  # [N, width]
        x = self.ln_final(self.transformer(x, causal=True, packing=packed))  # [N, width]
        return x[packed.ends] @ self.text_projection  # [B, embed_dim]: each caption's end token
