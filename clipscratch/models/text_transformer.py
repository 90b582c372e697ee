"""The causal text transformer of CLIP."""
from __future__ import annotations

import torch
from torch import nn

from ..errors import TextTooLongError
from .config import TextConfig
from .layers import LayerNorm, Packing, Transformer


class TextTransformer(nn.Module):
    """Tokens -> embeddings + positions -> causal blocks -> ln_final -> feature at EOT @ projection.

    The end-of-text token has the largest id, so ``tokens.argmax(-1)`` finds it.
    Because attention is causal, padding after EOT never changes the result, so a
    batch may be trimmed to its longest caption (any length <= context_length).
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
            longest = int((text != 0).sum(1).max())
            raise TextTooLongError(f"a caption has {longest} tokens, more than this model's context_length={self.context_length}; "
                             f"tokenize with clipscratch.tokenize(texts, context_length={self.context_length}, truncate=True)")
        return text[:, : self.context_length]

    def tokens(self, text: torch.Tensor) -> torch.Tensor:
        """Token ids [B, T] -> final hidden states [B, T', width] (after ln_final), T' = min(T, context)."""
        text = self.fit_context(text)
        T = text.shape[1]
        x = self.token_embedding(text) + self.positional_embedding[:T]  # [B, T, width]
        x = self.transformer(x, causal=True)  # [B, T, width]
        return self.ln_final(x)

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        text = self.fit_context(text)
        if self.pack:
            return self.forward_packed(text)
        x = self.tokens(text)  # [B, T, width]
        eot = x[torch.arange(x.shape[0], device=x.device), text.argmax(dim=-1)]  # [B, width]
        return eot @ self.text_projection  # [B, embed_dim]

    def forward_packed(self, text: torch.Tensor) -> torch.Tensor:
        """The same features as ``forward``, computed on the real tokens only: the captions of a
        batch are packed into one sequence [N, width] (N = the sum of their lengths through the
        end token); embeddings, LayerNorms, MLPs and projections run on it, attention on each
        caption's own tokens (layers.Packing)."""
        B = text.shape[0]
        lengths = text.argmax(dim=-1) + 1  # [B]: through the end-of-text token
        T = int(lengths.max())
        index = (torch.arange(T, device=text.device) < lengths[:, None]).flatten().nonzero().squeeze(1)  # [N]
        x = self.token_embedding(text[:, :T].reshape(-1)[index]) + self.positional_embedding[index % T]  # [N, width]
        x = self.ln_final(self.transformer(x, causal=True, packing=Packing(index, B, T)))  # [N, width]
        eot = x[lengths.cumsum(0) - 1]  # [B, width]: each caption's last token
        return eot @ self.text_projection  # [B, embed_dim]
