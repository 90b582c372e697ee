"""GPT-2 as ``transformers`` saves it (GPT2LMHeadModel) <-> clipscratch's caption decoder.

The names are the same once ``transformer.`` is dropped; GPT-2's Conv1D layers store their
weight as [in, out], nn.Linear as [out, in]: those are transposed. ``lm_head.weight`` is the
token embedding (tied). Cross-attention weights, when the checkpoint has them, get an open
gate (1): GPT-2 adds its cross-attention ungated.
"""
from __future__ import annotations

from typing import Dict

import torch

_CONV1D = (".attn.c_attn.weight", ".attn.c_proj.weight", ".mlp.c_fc.weight", ".mlp.c_proj.weight",
           ".crossattention.c_attn.weight", ".crossattention.q_attn.weight", ".crossattention.c_proj.weight")
_BUFFERS = (".attn.bias", ".attn.masked_bias")  # causal masks older transformers versions saved


def config_from_hf(hf: dict) -> dict:
    """DecoderConfig fields from a GPT2Config dict."""
    return {"vocab_size": hf["vocab_size"], "context_length": hf["n_positions"], "width": hf["n_embd"],
            "layers": hf["n_layer"], "heads": hf["n_head"], "layer_norm_eps": hf.get("layer_norm_epsilon", 1e-5),
            "cross_attention": bool(hf.get("add_cross_attention", False)), "image_embed_dim": 0,
            "bos_token_id": hf.get("bos_token_id", 50256), "eos_token_id": hf.get("eos_token_id", 50256)}


def from_hf(sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    out = {}
    for key, value in sd.items():
        if key == "lm_head.weight" or key.endswith(_BUFFERS):
            continue
        name = key[len("transformer."):] if key.startswith("transformer.") else key
        out[name] = value.t().contiguous() if name.endswith(_CONV1D) else value
        if name.endswith(".crossattention.q_attn.weight"):
            out[name.replace(".crossattention.q_attn.weight", ".cross_gate")] = torch.ones((), dtype=value.dtype)
    return out


def to_hf(sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    out = {}
    for name, value in sd.items():
        if name.endswith(".cross_gate"):
            continue
        out[f"transformer.{name}"] = value.t().contiguous() if name.endswith(_CONV1D) else value
    out["lm_head.weight"] = sd["wte.weight"]
    return out
