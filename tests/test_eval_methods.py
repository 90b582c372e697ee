"""Evaluation methods against independent computations on fixed tensors."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clipscratch.eval.clipscore import clip_score, ref_clip_score
from clipscratch.eval.datasets import few_shot_indices
from clipscratch.eval.gradcam import pointing_game
from clipscratch.eval.metrics import retrieval_recall
from clipscratch.eval.tip_adapter import build_cache, tip_logits
from clipscratch.eval.zeroshot import zeroshot_metrics


def _fixed(n=60, c=5, e=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(n, e, generator=g)
    classifier = F.normalize(torch.randn(c, e, generator=g), dim=-1)
    labels = torch.randint(0, c, (n,), generator=g)
    return feats, classifier, labels


def test_zeroshot_accuracy_matches_a_hand_written_loop():
    feats, classifier, labels = _fixed()
    correct1 = correct5 = 0
    per_class = {}
    for f, y in zip(feats, labels):
        f = f / f.norm()
        scores = [float(f @ w) for w in classifier]
        order = sorted(range(len(scores)), key=lambda i: -scores[i])
        correct1 += order[0] == y
        correct5 += y in order[:5]
        per_class.setdefault(int(y), []).append(order[0] == y)
    m = zeroshot_metrics(feats, labels, classifier)
    assert m["top1"] == pytest.approx(correct1 / len(labels))
    assert m["top5"] == pytest.approx(correct5 / len(labels))
    assert m["mean_per_class_recall"] == pytest.approx(np.mean([np.mean(v) for v in per_class.values()]))


def test_retrieval_recall_matches_brute_force_with_several_captions():
    g = torch.Generator().manual_seed(1)
    img, txt = torch.randn(10, 8, generator=g), torch.randn(25, 8, generator=g)
    owner = torch.arange(25) % 10
    r = retrieval_recall(img, txt, owner, ks=(1, 5))
    sim = F.normalize(img, dim=-1) @ F.normalize(txt, dim=-1).T
    for k in (1, 5):
        t2i = np.mean([owner[j].item() in sim[:, j].topk(k).indices.tolist() for j in range(25)])
        i2t = np.mean([any(owner[t].item() == i for t in sim[i].topk(k).indices.tolist()) for i in range(10)])
        assert r[f"text_to_image_R@{k}"] == pytest.approx(t2i)
        assert r[f"image_to_text_R@{k}"] == pytest.approx(i2t)


def test_tip_adapter_logits_follow_the_formula():
    feats, classifier, _ = _fixed(n=7)
    g = torch.Generator().manual_seed(2)
    shots, shot_labels = torch.randn(10, 16, generator=g), torch.arange(10) % 5
    keys, values = build_cache(shots, shot_labels, 5)
    alpha, beta = 1.7, 5.5
    got = tip_logits(feats, classifier, keys, values, alpha, beta)
    for i in range(7):
        f = feats[i] / feats[i].norm()
        for c in range(5):
            cache = sum(math.exp(-beta * (1 - float(f @ (shots[j] / shots[j].norm())))) for j in range(10) if shot_labels[j] == c)
            expected = 100 * float(f @ classifier[c]) + alpha * cache
            assert got[i, c].item() == pytest.approx(expected, rel=1e-4)


def test_clipscore_and_refclipscore_follow_the_definitions():
    g = torch.Generator().manual_seed(3)
    img, cap = torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g)
    refs = [torch.randn(2, 8, generator=g) for _ in range(4)]
    s = clip_score(img, cap)
    for i in range(4):
        cos = float(F.cosine_similarity(img[i], cap[i], dim=0))
        assert s[i].item() == pytest.approx(2.5 * max(cos, 0), abs=1e-6)
    r = ref_clip_score(s, cap, refs)
    for i in range(4):
        best = max(max(float(F.cosine_similarity(cap[i], ref, dim=0)) for ref in refs[i]), 0)
        expected = 0 if s[i] + best == 0 else 2 * s[i].item() * best / (s[i].item() + best)
        assert r[i].item() == pytest.approx(expected, abs=1e-6)


def test_pointing_game_counts_peaks_inside_boxes():
    cams = np.zeros((2, 32, 32), np.float32)
    cams[0, 5, 5] = 1.0  # (x=5,y=5) in a 32 map -> (10.5..) in a 64 image: inside box
    cams[1, 30, 30] = 1.0  # bottom-right: outside
    boxes = [[(0, 0, 20, 20)], [(0, 0, 20, 20)]]
    r = pointing_game(cams, boxes, 64)
    assert r["pointing_accuracy"] == 0.5
    assert r["chance"] == pytest.approx(21 * 21 / 64 ** 2)


def test_few_shot_indices_draw_k_per_class():
    labels = torch.tensor([0] * 10 + [1] * 3 + [2] * 8)
    idx = few_shot_indices(labels, 4, seed=0)
    assert sorted(labels[idx].tolist()) == [0] * 4 + [1] * 3 + [2] * 4
    assert idx == few_shot_indices(labels, 4, seed=0) and idx != few_shot_indices(labels, 4, seed=1)
