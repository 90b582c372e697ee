"""Saving and loading caption decoders, and their tokenizers.

A decoder folder holds ``decoder.safetensors`` and ``decoder.json`` (its DecoderConfig, the
tokenizer, and the CLIP checkpoint whose features it reads). ``load_decoder`` also reads GPT-2
as ``transformers`` saves it (``config.json`` with model_type gpt2 and model.safetensors or
pytorch_model.bin, through convert/gpt2.py; the tokenizer from its tokenizer.json).
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import List, Optional, Sequence

import torch
from safetensors.torch import load_file, save_file

from ..errors import ClipscratchError
from .decoder import CaptionDecoder, DecoderConfig
from .peft import trainable_names

WEIGHTS, META = "decoder.safetensors", "decoder.json"


class DecoderTokenizer:
    """ids <-> text for a decoder: CLIP's BPE (``clip``), or a GPT-2 folder's tokenizer.json.

    With CLIP's BPE a decoder trained here keeps a compact vocabulary, ``vocab``: the BPE ids
    its training text uses (start and end tokens included), so its embedding and output layer
    hold a few thousand rows, not 49,408. Text outside it loses those tokens."""

    def __init__(self, spec: str = "clip", vocab: Optional[List[int]] = None):
        self.spec, self.vocab = spec, vocab
        if spec == "clip":
            from ..tokenizer import get_tokenizer

            self._clip = get_tokenizer(77)
            self._index = {bpe: i for i, bpe in enumerate(vocab)} if vocab else None
        else:
            from tokenizers import Tokenizer

            path = os.path.join(spec, "tokenizer.json")
            if not os.path.exists(path):
                raise ClipscratchError(f"{spec}: no tokenizer.json (save the GPT-2 tokenizer there with transformers)")
            self._hf = Tokenizer.from_file(path)

    @classmethod
    def compact(cls, texts: Sequence[str]) -> "DecoderTokenizer":
        """CLIP's BPE restricted to the ids ``texts`` use, plus the start and end tokens."""
        from ..tokenizer import get_tokenizer

        clip = get_tokenizer(77)
        used = {i for ids in clip.encode_batch(list(texts)) for i in ids} | {clip.sot_token_id, clip.eot_token_id}
        return cls("clip", sorted(used))

    def special(self, which: str) -> int:
        bpe = self._clip.sot_token_id if which == "bos" else self._clip.eot_token_id
        return self._index[bpe] if self._index else bpe

    def encode(self, text: str) -> List[int]:
        if self.spec != "clip":
            return self._hf.encode(text).ids
        ids = self._clip.encode(text)
        return [self._index[i] for i in ids if i in self._index] if self._index else ids

    def decode(self, ids: Sequence[int]) -> str:
        if self.spec != "clip":
            return self._hf.decode(list(ids)).strip()
        return self._clip.decode([self.vocab[i] for i in ids] if self.vocab else ids)

    def to_json(self) -> dict:
        return {"tokenizer": self.spec, "vocab": self.vocab}


def save_decoder(model: CaptionDecoder, directory: str, tokenizer: DecoderTokenizer, clip: str = "",
                 extra: Optional[dict] = None) -> str:
    os.makedirs(directory, exist_ok=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, os.path.join(directory, WEIGHTS))
    meta = {"format": "clipscratch-decoder", "config": dataclasses.asdict(model.config), **tokenizer.to_json(), "clip": clip,
            **(extra or {})}
    with open(os.path.join(directory, META), "w") as f:
        json.dump(meta, f, indent=2)
    return directory


def read_meta(directory: str) -> dict:
    path = os.path.join(directory, META)
    if not os.path.exists(path):
        raise ClipscratchError(f"{directory}: not a caption decoder folder (no {META})")
    with open(path) as f:
        return json.load(f)


def _read_gpt2(directory: str):
    from ..convert import gpt2

    with open(os.path.join(directory, "config.json")) as f:
        hf = json.load(f)
    if hf.get("model_type") != "gpt2":
        raise ClipscratchError(f"{directory}/config.json: model_type {hf.get('model_type')!r} is not gpt2")
    for name in ("model.safetensors", "pytorch_model.bin"):
        path = os.path.join(directory, name)
        if os.path.exists(path):
            sd = load_file(path) if name.endswith(".safetensors") else torch.load(path, map_location="cpu", weights_only=True)
            return gpt2.config_from_hf(hf), gpt2.from_hf(sd), directory
    raise ClipscratchError(f"{directory}: no model.safetensors or pytorch_model.bin")


def load_decoder(directory: str, **changes):
    """(decoder, DecoderTokenizer (None for a GPT-2 folder without tokenizer.json), meta).
    ``changes`` replace config fields (a method, the image
    interface): parameters they add start fresh; every other key must be in the file."""
    if not os.path.isdir(directory):
        raise ClipscratchError(f"{directory}: no such decoder folder")
    if os.path.exists(os.path.join(directory, META)):
        meta = read_meta(directory)
        fields, sd = meta["config"], load_file(os.path.join(directory, WEIGHTS))
        tokenizer = DecoderTokenizer(meta["tokenizer"], meta.get("vocab"))
    elif os.path.exists(os.path.join(directory, "config.json")):
        fields, sd, spec = _read_gpt2(directory)
        tokenizer = DecoderTokenizer(spec) if os.path.exists(os.path.join(spec, "tokenizer.json")) else None
        meta = {"format": "gpt2", "clip": ""}
    else:
        raise ClipscratchError(f"{directory}: neither a clipscratch decoder ({META}) nor a transformers GPT-2 folder (config.json)")
    cfg = DecoderConfig(**{**fields, **changes})
    model = CaptionDecoder(cfg)
    expected = model.state_dict()
    fresh = set(trainable_names(model, cfg.method)) if changes else set()
    missing = sorted(set(expected) - set(sd) - fresh)
    unexpected = sorted(set(sd) - set(expected))
    wrong = [k for k in expected if k in sd and sd[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        raise ClipscratchError(f"{directory} does not fit the decoder: " + "; ".join(
            part for part in (f"missing {missing[:5]}" if missing else "", f"unexpected {unexpected[:5]}" if unexpected else "",
                              f"shape mismatch {wrong[:5]}" if wrong else "") if part))
    model.load_state_dict({**expected, **sd}, strict=True)
    return model.eval(), tokenizer, meta
