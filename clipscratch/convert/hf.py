"""Hugging Face ``transformers`` CLIPModel layout <-> clipscratch.

HF splits the packed attention projection into q/k/v and stores projections as
``nn.Linear`` weights ([out, in]); clipscratch keeps OpenAI's packed
``in_proj_weight`` and ``x @ proj`` matrices ([in, out]). Only ViT image towers
exist in HF's CLIPModel.
"""
from __future__ import annotations

import re
from typing import Dict, Tuple

import torch

from ..errors import ClipscratchError
from ..models.config import CLIPConfig, TextConfig, VisionConfig

_BLOCK_RENAMES = {
    "self_attn.out_proj": "attn.out_proj",
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
}
_TOWERS = {"text_model": "text.transformer", "vision_model": "visual.transformer"}
_SINGLE = {
    "text_model.embeddings.token_embedding.weight": "text.token_embedding.weight",
    "text_model.embeddings.position_embedding.weight": "text.positional_embedding",
    "text_model.final_layer_norm.weight": "text.ln_final.weight",
    "text_model.final_layer_norm.bias": "text.ln_final.bias",
    "vision_model.embeddings.class_embedding": "visual.class_embedding",
    "vision_model.embeddings.patch_embedding.weight": "visual.conv1.weight",
    "vision_model.embeddings.position_embedding.weight": "visual.positional_embedding",
    "vision_model.pre_layrnorm.weight": "visual.ln_pre.weight",
    "vision_model.pre_layrnorm.bias": "visual.ln_pre.bias",
    "vision_model.post_layernorm.weight": "visual.ln_post.weight",
    "vision_model.post_layernorm.bias": "visual.ln_post.bias",
    "logit_scale": "logit_scale",
}
_TRANSPOSED = {"text_projection.weight": "text.text_projection", "visual_projection.weight": "visual.proj"}
_LAYER = re.compile(r"^(text_model|vision_model)\.encoder\.layers\.(\d+)\.(.+)$")


def config_from_hf(hf: dict) -> CLIPConfig:
    t, v = hf.get("text_config", {}), hf.get("vision_config", {})
    acts = {t.get("hidden_act", "quick_gelu"), v.get("hidden_act", "quick_gelu")}
    if len(acts) != 1 or acts - {"quick_gelu", "gelu"}:
        raise ClipscratchError(f"unsupported hidden_act {sorted(acts)} in HF config (need both quick_gelu or both gelu)")
    text = TextConfig(
        context_length=t.get("max_position_embeddings", 77), vocab_size=t.get("vocab_size", 49408),
        width=t.get("hidden_size", 512), heads=t.get("num_attention_heads", 8),
        layers=t.get("num_hidden_layers", 12), mlp_ratio=t.get("intermediate_size", 2048) / t.get("hidden_size", 512),
    )
    vision = VisionConfig(
        image_size=v.get("image_size", 224), layers=v.get("num_hidden_layers", 12), width=v.get("hidden_size", 768),
        patch_size=v.get("patch_size", 32), heads=_heads_or_default(v.get("num_attention_heads", 12), v.get("hidden_size", 768)),
        mlp_ratio=v.get("intermediate_size", 3072) / v.get("hidden_size", 768),
    )
    return CLIPConfig(embed_dim=hf.get("projection_dim", 512), vision=vision, text=text, activation=acts.pop())


def _heads_or_default(heads: int, width: int):
    return None if heads == width // 64 else heads


def config_to_hf(cfg: CLIPConfig) -> dict:
    if cfg.vision.is_resnet:
        raise ClipscratchError("transformers' CLIPModel has no ResNet image tower: only ViT models export to HF")
    t, v = cfg.text, cfg.vision
    return {
        "architectures": ["CLIPModel"],
        "model_type": "clip",
        "projection_dim": cfg.embed_dim,
        "logit_scale_init_value": cfg.init_logit_scale,
        "text_config": {
            "model_type": "clip_text_model", "hidden_size": t.width, "intermediate_size": int(t.width * t.mlp_ratio),
            "num_attention_heads": t.heads, "num_hidden_layers": t.layers, "max_position_embeddings": t.context_length,
            "vocab_size": t.vocab_size, "hidden_act": cfg.activation, "projection_dim": cfg.embed_dim,
            "bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 1,
        },
        "vision_config": {
            "model_type": "clip_vision_model", "hidden_size": v.width, "intermediate_size": int(v.width * v.mlp_ratio),
            "num_attention_heads": v.num_heads, "num_hidden_layers": v.layers, "image_size": v.image_size,
            "patch_size": v.patch_size, "hidden_act": cfg.activation, "projection_dim": cfg.embed_dim,
        },
    }


def from_hf(sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    out: Dict[str, torch.Tensor] = {}
    qkv: Dict[Tuple[str, str], Dict[str, torch.Tensor]] = {}
    for key, value in sd.items():
        key = key[len("model."):] if key.startswith("model.") else key
        if key in _SINGLE:
            out[_SINGLE[key]] = value
        elif key in _TRANSPOSED:
            out[_TRANSPOSED[key]] = value.t().contiguous()
        elif (m := _LAYER.match(key)) is not None:
            tower, idx, rest = m.groups()
            prefix = f"{_TOWERS[tower]}.resblocks.{idx}."
            proj = re.match(r"self_attn\.([qkv])_proj\.(weight|bias)$", rest)
            if proj:
                qkv.setdefault((prefix, proj.group(2)), {})[proj.group(1)] = value
                continue
            for old, new in _BLOCK_RENAMES.items():
                if rest.startswith(old + "."):
                    out[prefix + new + rest[len(old):]] = value
                    break
            else:
                raise ClipscratchError(f"unexpected key {key!r} in HF CLIP checkpoint")
        elif key.endswith("position_ids"):
            continue
        else:
            raise ClipscratchError(f"unexpected key {key!r} in HF CLIP checkpoint")
    for (prefix, kind), parts in qkv.items():
        out[f"{prefix}attn.in_proj_{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out


def to_hf(sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    inverse_single = {v: k for k, v in _SINGLE.items()}
    inverse_transposed = {v: k for k, v in _TRANSPOSED.items()}
    towers = {v: k for k, v in _TOWERS.items()}
    out: Dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if key in inverse_single:
            out[inverse_single[key]] = value
        elif key in inverse_transposed:
            out[inverse_transposed[key]] = value.t().contiguous()
        else:
            m = re.match(r"^(text\.transformer|visual\.transformer)\.resblocks\.(\d+)\.(.+)$", key)
            if m is None:
                raise ClipscratchError(f"key {key!r} has no place in the HF CLIP layout")
            tower, idx, rest = m.groups()
            prefix = f"{towers[tower]}.encoder.layers.{idx}."
            if rest.startswith("attn.in_proj_"):
                kind = rest.rsplit("_", 1)[1]
                for name, part in zip("qkv", value.chunk(3, dim=0)):
                    out[f"{prefix}self_attn.{name}_proj.{kind}"] = part.contiguous()
                continue
            for old, new in _BLOCK_RENAMES.items():
                if rest.startswith(new + "."):
                    out[prefix + old + rest[len(new):]] = value
                    break
    return out
