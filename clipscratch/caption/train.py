"""Training caption decoders on a frozen CLIP image tower, top to bottom:

    config -> CLIP (frozen) -> caption data (train part) -> language model (pretrained here on
    caption text, or loaded: GPT-2 saved by transformers) -> image features of the train part
    -> one decoder per method (adapter / prefix / lora / none), the language model frozen

    python -m clipscratch.caption train --config configs/caption_shapes.yaml
    python evaluate.py caption --model CLIP --decoder runs/caption_shapes/adapter ... --dataset SPEC
"""
from __future__ import annotations

import dataclasses
import os
import random
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..errors import ClipscratchError
from .decoder import CaptionDecoder, DecoderConfig
from .io import DecoderTokenizer, load_decoder, save_decoder
from .peft import METHODS, freeze_all_but, trainable_names


@dataclass(frozen=True)
class LMConfig:
    init: str = ""  # start from this decoder or transformers GPT-2 folder ("": a fresh decoder.* as configured)
    captions: str = ""  # text to pretrain on: a caption file or wds:PATTERN ("": the train part's captions)
    exclude: List[str] = field(default_factory=list)  # image lists whose captions stay out (the test split)
    steps: int = 2000  # 0: use `init` as it is
    batch_size: int = 128
    lr: float = 1e-3
    warmup_steps: int = 100


@dataclass(frozen=True)
class CaptionerConfig:
    methods: List[str] = field(default_factory=lambda: ["adapter", "prefix", "lora"])
    steps: int = 1000
    batch_size: int = 64
    lr: float = 1e-3
    warmup_steps: int = 50


@dataclass(frozen=True)
class CaptionConfig:
    clip: str = "runs/default"  # any checkpoint clipscratch.load reads: its image tower stays frozen
    clip_arch: str = ""  # architecture name for open_clip checkpoints
    data: str = ""  # an evaluate.py dataset spec with captions: training reads its train part
    root: str = "data"
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    lm: LMConfig = field(default_factory=LMConfig)
    captioner: CaptionerConfig = field(default_factory=CaptionerConfig)
    max_length: int = 30  # caption tokens kept in training
    seed: int = 0
    device: str = "auto"
    output_dir: str = "runs/caption"


def resolve(path: Optional[str], overrides: Sequence[str] = ()) -> CaptionConfig:
    from ..train.config import _merge, apply_overrides, from_dict, read_yaml

    merged = dataclasses.asdict(CaptionConfig())
    if path:
        _merge(merged, read_yaml(path))
    cfg = from_dict(apply_overrides(merged, list(overrides)), CaptionConfig)
    unknown = [m for m in cfg.captioner.methods if m not in METHODS]
    if unknown or not cfg.data:
        raise ClipscratchError(f"captioner.methods must be among {', '.join(METHODS)} (got {unknown})" if unknown
                               else "set data=SPEC: a dataset with captions (e.g. shapes:colour, wds:PATTERN)")
    return cfg


def sequences(tokenizer: DecoderTokenizer, captions: Sequence[str], cfg: DecoderConfig, max_length: int
              ) -> Tuple[torch.Tensor, torch.Tensor]:
    """[start] + ids + [end] per caption, padded with the end token: (ids [N, L], lengths [N])."""
    rows = [[cfg.bos_token_id] + tokenizer.encode(c)[:max_length] + [cfg.eos_token_id] for c in captions]
    ids = torch.full((len(rows), max(map(len, rows))), cfg.eos_token_id, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
    return ids, torch.tensor([len(r) for r in rows])


def lm_loss(decoder: CaptionDecoder, ids: torch.Tensor, lengths: torch.Tensor, prefix=None, memory=None) -> torch.Tensor:
    """Next-token cross-entropy over each caption's own tokens (its end token included)."""
    logits = decoder(ids[:, :-1], prefix, memory)  # [B, L-1, V]
    mask = torch.arange(ids.shape[1] - 1, device=ids.device)[None, :] < (lengths[:, None].to(ids.device) - 1)
    return F.cross_entropy(logits[mask], ids[:, 1:][mask])


def caption_texts(spec: str, exclude: Sequence[str]) -> List[str]:
    """Every caption of a caption file or of wds shards (their json/txt members, no image read),
    leaving out images named in the ``exclude`` lists."""
    from ..data.captions import read_image_list, read_table

    skip = set().union(*[read_image_list(p) for p in exclude]) if exclude else set()
    if spec.startswith("wds:"):
        import json

        import webdataset as wds

        from ..data.pipeline import expand_sources

        texts = []
        for sample in wds.WebDataset([u for s in expand_sources(spec[4:]) for u in s], shardshuffle=False, empty_check=False):
            meta = json.loads(sample["json"]) if "json" in sample else {}
            if os.path.basename(str(meta.get("source", ""))) not in skip:
                texts += meta.get("captions") or [sample.get("txt", b"").decode("utf-8", "replace")]
        return [t for t in texts if t.strip()]
    return [c for r in read_table(spec) if os.path.basename(r.image) not in skip and r.image not in skip for c in r.captions]


def _optimizer(params, lr: float, warmup: int, steps: int):
    from ..train.optim import warmup_cosine

    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    return opt, warmup_cosine(opt, warmup, steps)


def pretrain_lm(cfg: CaptionConfig, texts: List[str], device) -> Tuple[CaptionDecoder, DecoderTokenizer]:
    """The language model: loaded from lm.init, or a fresh one on CLIP's BPE restricted to the
    texts' tokens; then (lm.steps > 0) trained on the texts."""
    if cfg.lm.init:
        decoder, tokenizer, _ = load_decoder(cfg.lm.init)
        if tokenizer is None:
            raise ClipscratchError(f"{cfg.lm.init}: no tokenizer.json beside the GPT-2 weights")
    else:
        tokenizer = DecoderTokenizer.compact(texts)
        decoder = CaptionDecoder(dataclasses.replace(
            cfg.decoder, cross_attention=False, image_embed_dim=0, method="none", vocab_size=len(tokenizer.vocab),
            bos_token_id=tokenizer.special("bos"), eos_token_id=tokenizer.special("eos")))
    decoder = decoder.to(device).train()
    if cfg.lm.steps:
        ids, lengths = sequences(tokenizer, texts, decoder.config, cfg.max_length)
        opt, sched = _optimizer(decoder.parameters(), cfg.lm.lr, cfg.lm.warmup_steps, cfg.lm.steps)
        rng = random.Random(cfg.seed)
        bar = tqdm(range(cfg.lm.steps), desc=f"language model on {len(texts)} captions", dynamic_ncols=True)
        for _ in bar:
            idx = rng.sample(range(len(texts)), min(cfg.lm.batch_size, len(texts)))
            loss = lm_loss(decoder, ids[idx].to(device), lengths[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            bar.set_postfix(loss=f"{loss.item():.3f}")
    return decoder.eval(), tokenizer


@torch.no_grad()
def image_features(clip, preprocess, data, device, batch_size: int = 64) -> Tuple[torch.Tensor, torch.Tensor]:
    """(unit CLIP image embeddings [N, E], image tokens [N, T, D]) of every image, on the CPU."""
    embeddings, tokens = [], []
    for start in tqdm(range(0, len(data), batch_size), desc="CLIP image features", leave=False):
        images = torch.stack([preprocess(data.images[i]) for i in range(start, min(len(data), start + batch_size))]).to(device)
        embeddings.append(F.normalize(clip.encode_image(images).float(), dim=-1).cpu())
        tokens.append(clip.encode_image_tokens(images).float().cpu())
    return torch.cat(embeddings), torch.cat(tokens)


def train_captioner(cfg: CaptionConfig, lm_dir: str, method: str, features, captions: List[List[str]], device):
    """One method on the frozen language model: returns (decoder, trainable values)."""
    embeddings, tokens = features
    d = cfg.decoder
    decoder, tokenizer, _ = load_decoder(lm_dir, method=method, cross_attention=d.cross_attention, image_width=tokens.shape[-1],
                                         image_embed_dim=embeddings.shape[-1], prefix_length=d.prefix_length,
                                         adapter_dim=d.adapter_dim, prefix_tokens=d.prefix_tokens, lora_rank=d.lora_rank,
                                         lora_alpha=d.lora_alpha)
    decoder = decoder.to(device).train()
    trainable = freeze_all_but(decoder, trainable_names(decoder, method))
    pairs = [(i, c) for i, caps in enumerate(captions) for c in caps]
    c = cfg.captioner
    opt, sched = _optimizer([p for p in decoder.parameters() if p.requires_grad], c.lr, c.warmup_steps, c.steps)
    rng = random.Random(cfg.seed)
    bar = tqdm(range(c.steps), desc=f"{method}: {trainable:,} trainable values", dynamic_ncols=True)
    for _ in bar:
        batch = rng.sample(pairs, min(c.batch_size, len(pairs)))
        idx = torch.tensor([i for i, _ in batch])
        ids, lengths = sequences(tokenizer, [text for _, text in batch], decoder.config, cfg.max_length)
        prefix, memory = decoder.image_inputs(embeddings[idx].to(device), tokens[idx].to(device))
        loss = lm_loss(decoder, ids.to(device), lengths, prefix, memory)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    return decoder.eval(), tokenizer, trainable


def run(cfg: CaptionConfig) -> dict:
    from ..eval.datasets import from_spec
    from ..eval.splits import Splits
    from ..loading import load

    device = ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
    torch.manual_seed(cfg.seed)
    clip, preprocess = load(cfg.clip, model=cfg.clip_arch or None, device=device)
    splits = Splits(from_spec(cfg.data, cfg.root))
    splits.check_fit("caption training")
    train = splits["train"]
    if not train.captions:
        raise ClipscratchError(f"{cfg.data} has no captions to train a decoder on")
    print(f"  {splits.describe()}")
    lm_texts = caption_texts(cfg.lm.captions, cfg.lm.exclude) if cfg.lm.captions else [c for caps in train.captions for c in caps]
    lm, tokenizer = pretrain_lm(cfg, lm_texts, device)
    lm_dir = save_decoder(lm, os.path.join(cfg.output_dir, "lm"), tokenizer, extra={"captions": len(lm_texts)})
    print(f"  language model: {len(lm_texts)} captions, vocabulary of {lm.config.vocab_size:,} tokens")
    features = image_features(clip, preprocess, train, device)
    results = {"lm": lm_dir, "lm_captions": len(lm_texts), "train_images": len(train), "methods": {}}
    for method in cfg.captioner.methods:
        decoder, tokenizer, trainable = train_captioner(cfg, lm_dir, method, features, train.captions, device)
        path = save_decoder(decoder, os.path.join(cfg.output_dir, method), tokenizer, clip=cfg.clip,
                            extra={"trainable": trainable, "train_images": len(train), "data": cfg.data})
        results["methods"][method] = {"decoder": path, "trainable": trainable}
        print(f"  {method:<8} {trainable:>10,} trainable values -> {path}")
    return results
