"""The CLIP model: an image tower, a text tower and a learned temperature."""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .config import CLIPConfig
from .modified_resnet import ModifiedResNet
from .text_transformer import TextTransformer
from .tower_stream import run_beside, side_stream
from .vision_transformer import VisionTransformer


class CLIPOutput(NamedTuple):
    """What ``CLIP.forward`` returns: everything a contrastive loss needs."""

    image_features: torch.Tensor  # [B, E], unit norm
    text_features: torch.Tensor  # [B, E], unit norm
    scale: torch.Tensor  # exp(logit_scale), clamped
    bias: Optional[torch.Tensor]  # SigLIP's learned logit bias, None for CLIP


class CLIP(nn.Module):
    def __init__(self, cfg: CLIPConfig, init: bool = True):
        super().__init__()
        self.config = cfg
        if cfg.vision.is_resnet:
            self.visual = ModifiedResNet(cfg.vision, cfg.embed_dim)
        else:
            self.visual = VisionTransformer(cfg.vision, cfg.embed_dim, cfg.activation)
        self.text = TextTransformer(cfg.text, cfg.embed_dim, cfg.activation)
        self.logit_scale = nn.Parameter(torch.tensor(float(cfg.init_logit_scale)))
        if cfg.init_logit_bias is not None:  # SigLIP
            self.logit_bias = nn.Parameter(torch.tensor(float(cfg.init_logit_bias)))
        if init:
            self.visual.init_weights()
            self.text.init_weights()
        self.text_stream: Optional[int] = None  # set_text_stream: the side stream's priority, None for one stream
        self._compiled_encoders = None  # compile_towers: what forward runs instead of encode_image/encode_text

    @property
    def image_size(self) -> int:
        return self.config.vision.image_size

    @property
    def context_length(self) -> int:
        return self.config.text.context_length

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        x = self.visual(images)  # [B, E]
        return F.normalize(x, dim=-1) if normalize else x

    def encode_image_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """The image tower's output tokens [B, T, D] (ViT: after ln_post; ResNet: the last grid)."""
        return self.visual.output_tokens(images)

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        x = self.text(tokens)  # [B, E]
        return F.normalize(x, dim=-1) if normalize else x

    def scale(self) -> torch.Tensor:
        """exp(logit_scale) clamped to ``max_logit_scale`` (100, as in the CLIP paper)."""
        return self.logit_scale.exp().clamp(max=self.config.max_logit_scale)

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> CLIPOutput:
        encode_image, encode_text = self._compiled_encoders or (self.encode_image, self.encode_text)
        if self.text_stream is not None and images.is_cuda and not torch.compiler.is_compiling():
            image_features, text_features = run_beside(
                side_stream(images.device, self.text_stream), lambda t: encode_text(t, normalize=True), tokens,
                lambda i: encode_image(i, normalize=True), images)  # [B, E] each
        else:
            image_features = encode_image(images, normalize=True)  # [B, E]
            text_features = encode_text(tokens, normalize=True)  # [B, E]
        return CLIPOutput(image_features, text_features, self.scale(), getattr(self, "logit_bias", None))

    def set_text_stream(self, enabled: bool = True, priority: int = 0) -> None:
        """On a CUDA GPU, ``forward`` runs the text tower on a side stream beside the image tower
        (tower_stream.py; ``priority``: the stream's, -1 high): the same kernels on the same inputs.
        Skipped inside torch.compile, which would trace it as one stream: compile the towers
        apart (``compile_towers``), as train.py does with ``text_stream``."""
        self.text_stream = priority if enabled else None

    def compile_towers(self, **options) -> None:
        """``forward`` runs each tower through its own ``torch.compile(**options)`` (the loss and
        what calls ``forward`` stay eager); ``encode_image``, ``encode_text`` and copies of the
        model (evaluations) stay eager."""
        self._compiled_encoders = (torch.compile(self.encode_image, **options), torch.compile(self.encode_text, **options))

    def __getstate__(self):
        """Copies and pickles leave the compiled towers behind: they are this model's, and a copy
        (copy.deepcopy keeps functions as they are) would run them on this model's weights."""
        state = self.__dict__.copy()  # object's default (Python 3.11+ has no other), which nn.Module.__setstate__ takes
        state["_compiled_encoders"] = None
        return state

    def set_text_packing(self, enabled: bool = True, kernel: str = "auto") -> None:
        """Pack the captions of a batch (text_transformer.forward_packed): the same features,
        each caption costing its own length instead of the batch's longest; ``kernel`` attends
        within the captions (packing.packed_attention)."""
        from .layers import Attention
        from .packing import KERNELS

        _check_kernel(kernel, KERNELS, "packed attention kernel")
        self.text.pack = enabled
        _set_on(self.text, Attention, "packed_kernel", kernel)

    def set_attention_kernel(self, kernel: str = "auto") -> None:
        """How both towers' attention picks SDPA's backend (packed captions aside): "auto" tries
        the memory-efficient kernel first for sequences of up to 64 tokens on a CUDA GPU
        (layers.sdpa_backends); "sdpa" leaves the pick to SDPA."""
        from .layers import ATTENTION_KERNELS, Attention

        _check_kernel(kernel, ATTENTION_KERNELS, "attention kernel")
        _set_on(self, Attention, "kernel", kernel)

    def set_fp8(self, enabled: bool = True) -> None:
        """Every attention and MLP projection in FP8 (models/fp8.py); for training on Hopper."""
        from .layers import MLP, Attention

        _set_on(self, (Attention, MLP), "fp8", enabled)

    def set_fp8_delayed(self, enabled: bool = True) -> None:
        """The image tower's q/k/v projections and MLP first projections in FP8 with delayed scaling, where
        the one-pass backward kernels run (with ``set_fused_qkv`` and ``set_fused_activation``, training on a
        CUDA GPU with Triton; models/fp8_delayed.py): each gets a DelayedScales, which a first measuring
        step and ``fp8_delayed.update_scales`` after every backward keep current (train/run.py)."""
        from .fp8_delayed import DelayedScales
        from .layers import MLP, Attention

        for module in self.visual.modules() if hasattr(self.visual, "transformer") else []:
            if isinstance(module, (Attention, MLP)):
                module.fp8_scales = DelayedScales().to(next(module.parameters()).device) if enabled else None

    def set_fused_activation(self, enabled: bool = True) -> None:
        """While training on a CUDA GPU with Triton, each MLP's hidden bias and activation with a
        backward that computes the bias gradient in the same pass (models/bias_activation.py);
        off (the default here): the bias in the product and autograd's activation. Compiled, a
        step with it is 1-2% faster and matches autograd (docs/benchmarks.md, parts 72-78);
        eager, its unfused forward makes the step slower, so train.py turns it on with
        compile=true only (``fused_activation`` in train/config.py)."""
        from .layers import MLP

        _set_on(self, MLP, "fused_activation", enabled)

    def set_fused_qkv(self, enabled: bool = True) -> None:
        """While training on a CUDA GPU with Triton, each attention's q/k/v projection with a backward
        that gathers the heads' gradients and sums the bias gradient in one pass
        (models/qkv_projection.py; not for packed captions, whose projection has no heads, nor with
        FP8); off (the default here): autograd's two passes. Exact, and faster eager and compiled, so
        train.py turns it on (``fused_qkv`` in train/config.py; docs/benchmarks.md, parts 81-84)."""
        from .layers import Attention

        _set_on(self, Attention, "fused_qkv", enabled)

    def _transformers(self):
        return [self.text.transformer] + ([self.visual.transformer] if hasattr(self.visual, "transformer") else [])

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        """Keep each block's input only; the backward runs each block again (one more forward)."""
        for transformer in self._transformers():
            transformer.grad_checkpointing = enabled

    def set_mlp_recompute(self, enabled: bool = True) -> None:
        """Keep each MLP's input only; the backward runs LayerNorm and the MLP again: about half
        a block's activations for a third more MLP matrix products. Inside grad checkpointing
        it changes nothing."""
        for transformer in self._transformers():
            transformer.recompute_mlp = enabled


def _set_on(root: nn.Module, types, attribute: str, value) -> None:
    """``attribute = value`` on every module of ``types`` under ``root``."""
    for module in root.modules():
        if isinstance(module, types):
            setattr(module, attribute, value)


def _check_kernel(kernel: str, known, what: str) -> None:
    if kernel not in known:
        raise ValueError(f"unknown {what} {kernel!r}; use one of {', '.join(known)}")
