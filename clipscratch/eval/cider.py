"""CIDEr-D (Vedantam et al., 2015), as the coco-caption toolkit computes it.

Each caption becomes tf-idf vectors of its 1- to 4-grams; document frequencies come from the
reference captions of all images scored together (one document per image). For each n the
candidate's vector is compared with each reference's by a cosine in which the candidate's
weights are clipped to the reference's (the "-D": repeating words does not pay), times a
Gaussian penalty on the length difference (sigma 6); the mean over n and over references,
times 10, is the image's score. Lengths are counted in bigrams, as coco-caption does (the same
difference as in words, except for one-word captions). ``tests/test_cider.py`` checks this
against pycocoevalcap.
"""
from __future__ import annotations

import math
import re
from collections import Counter
from typing import Dict, List, Sequence, Tuple

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def words(caption: str) -> List[str]:
    """Lower-cased words without punctuation (close to coco-caption's PTB tokenizer, no Java)."""
    return _WORD.findall(caption.lower())


def ngrams(tokens: Sequence[str], n_max: int = 4) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for n in range(1, n_max + 1) for i in range(len(tokens) - n + 1))


def _vector(counts: Counter, df: Counter, log_docs: float, n_max: int) -> Tuple[List[dict], List[float], int]:
    vec = [dict() for _ in range(n_max)]
    for gram, tf in counts.items():
        vec[len(gram) - 1][gram] = tf * (log_docs - math.log(max(1.0, df[gram])))
    norms = [math.sqrt(sum(w * w for w in v.values())) for v in vec]
    length = sum(tf for gram, tf in counts.items() if len(gram) == 2)
    return vec, norms, length


def cider_d(candidates: Dict[str, str], references: Dict[str, List[str]], n_max: int = 4, sigma: float = 6.0
            ) -> Tuple[float, Dict[str, float]]:
    """(corpus CIDEr-D, per-image scores) of one candidate caption per image against its references."""
    keys = list(candidates)
    ref_counts = {k: [ngrams(words(r), n_max) for r in references[k]] for k in keys}
    df: Counter = Counter()
    for counts in ref_counts.values():
        df.update(set(g for c in counts for g in c))
    log_docs = math.log(float(len(keys)))
    scores = {}
    for k in keys:
        cand, cand_norm, cand_len = _vector(ngrams(words(candidates[k]), n_max), df, log_docs, n_max)
        total = [0.0] * n_max
        for counts in ref_counts[k]:
            ref, ref_norm, ref_len = _vector(counts, df, log_docs, n_max)
            penalty = math.exp(-((cand_len - ref_len) ** 2) / (2 * sigma ** 2))
            for n in range(n_max):
                dot = sum(min(w, ref[n].get(g, 0.0)) * ref[n].get(g, 0.0) for g, w in cand[n].items())
                if cand_norm[n] and ref_norm[n]:
                    dot /= cand_norm[n] * ref_norm[n]
                total[n] += dot * penalty
        scores[k] = 10.0 * sum(total) / n_max / max(1, len(ref_counts[k]))
    return sum(scores.values()) / max(1, len(scores)), scores
