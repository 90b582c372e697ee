"""Decoding captions: greedy, and beam search with a length penalty."""
from __future__ import annotations

from typing import List, Optional

import torch

from .decoder import CaptionDecoder


def _room(decoder: CaptionDecoder, max_length: int) -> int:
    """Caption tokens that fit after the image prefix (the start token included)."""
    return min(max_length + 1, decoder.config.context_length - decoder.image_prefix_length)


@torch.no_grad()
def greedy(decoder: CaptionDecoder, prefix: Optional[torch.Tensor], memory: Optional[torch.Tensor], batch: int,
           max_length: int = 30) -> List[List[int]]:
    """The most likely next token each step, for a batch of images; ids without start and end tokens."""
    cfg = decoder.config
    device = decoder.wte.weight.device
    seqs = torch.full((batch, 1), cfg.bos_token_id, dtype=torch.long, device=device)
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    for _ in range(_room(decoder, max_length) - 1):
        nxt = decoder(seqs, prefix, memory)[:, -1].argmax(-1)  # [B]
        nxt = torch.where(done, torch.full_like(nxt, cfg.eos_token_id), nxt)
        seqs = torch.cat([seqs, nxt[:, None]], dim=1)
        done |= nxt == cfg.eos_token_id
        if done.all():
            break
    return [_strip(row.tolist(), cfg.eos_token_id) for row in seqs[:, 1:]]


@torch.no_grad()
def beam_search(decoder: CaptionDecoder, prefix: Optional[torch.Tensor], memory: Optional[torch.Tensor], batch: int,
                beams: int = 3, max_length: int = 30, length_penalty: float = 1.0) -> List[List[int]]:
    """Keep the ``beams`` best partial captions of each image by summed log-probability; finished
    ones compete by log-probability / length ** length_penalty."""
    cfg = decoder.config
    device = decoder.wte.weight.device
    out = []
    for b in range(batch):
        p = None if prefix is None else prefix[b : b + 1].expand(beams, -1, -1)
        m = None if memory is None else memory[b : b + 1].expand(beams, -1, -1)
        seqs = torch.full((1, 1), cfg.bos_token_id, dtype=torch.long, device=device)
        scores = torch.zeros(1, device=device)
        finished = []  # (normalised score, ids)
        for _ in range(_room(decoder, max_length) - 1):
            n = seqs.shape[0]
            logp = decoder(seqs, None if p is None else p[:n], None if m is None else m[:n])[:, -1].log_softmax(-1)  # [n, V]
            total = (scores[:, None] + logp).flatten()
            top = total.topk(min(2 * beams, total.numel()))
            keep_seqs, keep_scores = [], []
            for score, index in zip(top.values.tolist(), top.indices.tolist()):
                row, token = divmod(index, logp.shape[1])
                ids = seqs[row].tolist()[1:] + [token]
                if token == cfg.eos_token_id:
                    finished.append((score / max(1, len(ids) - 1) ** length_penalty, ids[:-1]))
                else:
                    keep_seqs.append(seqs[row].tolist() + [token])
                    keep_scores.append(score)
                if len(keep_seqs) == beams:
                    break
            if not keep_seqs or (len(finished) >= beams and max(s for s, _ in finished) >= max(keep_scores) /
                                 max(1, len(keep_seqs[0]) - 1) ** length_penalty):
                break
            seqs = torch.tensor(keep_seqs, device=device)
            scores = torch.tensor(keep_scores, device=device)
        if not finished:  # ran out of room: the best unfinished caption
            finished = [(s / max(1, len(q) - 1) ** length_penalty, q[1:]) for s, q in zip(scores.tolist(), seqs.tolist())]
        out.append(max(finished, key=lambda f: f[0])[1])
    return out


def _strip(ids: List[int], eos: int) -> List[int]:
    return ids[: ids.index(eos)] if eos in ids else ids
