"""The shapes demonstration: what the embedded default run (``configs/default.yaml``) needs
beyond the generic trainer, in one place.

* ``write_shapes_shards``: the generator ``data.generate.kind: shapes`` names. It writes the
  coloured-shapes images (``data/synthetic.py``) as the shards that data.train and data.val
  name; six colour-shape pairs never occur in them.
* ``ShapesEval``: the evaluator ``evals.shapes`` names: zero-shot colour, shape, count and
  position on fresh images, and the same plus retrieval on images of the pairs never seen.
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from typing import Dict, Tuple

import torch
from braceexpand import braceexpand

from ..errors import ClipscratchError

_SHARD_NAME = re.compile(r"^(?P<prefix>.+)-(?P<index>\d{6})\.tar$")


def _shard_layout(pattern: str) -> Tuple[str, str, int]:
    """(folder, prefix, shard count) of a pattern such as ``runs/default/data/train-{000000..000007}.tar``."""
    urls = list(braceexpand(pattern))
    folders = {os.path.dirname(u) for u in urls}
    names = [_SHARD_NAME.match(os.path.basename(u)) for u in urls]
    prefixes = {m.group("prefix") for m in names if m}
    if len(folders) != 1 or len(prefixes) != 1 or [int(m.group("index")) for m in names] != list(range(len(urls))):
        raise ClipscratchError(f"generated shards need a pattern like dir/prefix-{{000000..000007}}.tar, got {pattern!r}")
    return folders.pop(), prefixes.pop(), len(urls)


GENERATED_BY = "clipscratch shapes generator"


def _read_info(folder: str, prefix: str) -> dict:
    path = os.path.join(folder, f"{prefix}_info.json")
    if not os.path.exists(path):
        return {}
    try:
        with open(path) as f:
            return json.load(f)
    except ValueError:
        return {}


def write_shapes_shards(data, seed: int) -> None:
    """Write data.train (seed) and data.val (seed + 1) shards of shapes if they are not there.
    Only files this generator wrote are ever rewritten: shards of the same names from anywhere
    else are refused."""
    from ..data.make_shards import existing_shards, synthetic_samples, write_shards

    gen = data.generate
    for pattern, n, s in ((data.train, gen.train_samples, seed), (data.val, gen.val_samples, seed + 1)):
        if not n:
            continue
        folder, prefix, shards = _shard_layout(pattern)
        info = _read_info(folder, prefix)
        wanted = {"generated_by": GENERATED_BY, "seed": s, "samples": n, "shards": shards}
        if all(info.get(k) == v for k, v in wanted.items()) and all(
                os.path.exists(os.path.join(folder, f"{prefix}-{i:06d}.tar")) for i in range(shards)):
            continue
        if info.get("generated_by") != GENERATED_BY and (info or existing_shards(folder, prefix)):
            raise ClipscratchError(f"data.train / data.val name shards in {folder} that data.generate did not write; "
                                   f"to train on them set data.generate.kind= (empty), or let the generator write elsewhere")
        if n < shards:
            raise ClipscratchError(f"cannot spread {n} generated images over the {shards} shards {pattern!r} names")
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, f"{prefix}_info.json"), "w") as f:  # claims the names before writing them
            json.dump({"generated_by": GENERATED_BY, "complete": False}, f)
        write_shards(synthetic_samples(n, s, False, 64), folder, maxcount=math.ceil(n / shards), total=n, prefix=prefix,
                     desc=f"generating {prefix} shapes", overwrite=True, info={"generated_by": GENERATED_BY, "seed": s})


class ShapesEval:
    """Zero-shot accuracy on the four shapes tasks, on fresh images (seeds no shard uses), and on
    images of the held-out colour-shape pairs with retrieval."""

    @dataclass(frozen=True)
    class Options:
        images: int = 600

    def __init__(self, options: "ShapesEval.Options", cfg):
        from ..data.synthetic import TASKS, generate
        from ..eval.datasets import SHAPES_SEEDS, EvalData

        self.tasks = TASKS
        seed = SHAPES_SEEDS["test"]
        self.sets = {}
        for prefix, held_out in (("", False), ("unseen_pairs_", True)):
            samples = list(generate(options.images, seed, held_out))
            self.sets[prefix] = EvalData(f"shapes-test{'-unseen' if held_out else ''}-{options.images}",
                                         [s.image for s in samples], captions=[[s.caption] for s in samples],
                                         extra={"labels": [s.labels() for s in samples]})
        self.panels = [("shapes zero-shot accuracy", [f"zeroshot_{t}" for t in TASKS])]

    @torch.no_grad()
    def __call__(self, model, device) -> Dict[str, float]:
        from ..eval.features import FeatureExtractor
        from ..eval.metrics import retrieval_recall
        from ..eval.zeroshot import zeroshot_metrics
        from ..transforms import image_transform

        ex = FeatureExtractor(model, image_transform(model.image_size), device, progress=False)
        out: Dict[str, float] = {}
        for prefix, data in self.sets.items():
            feats = ex.image_features(data)
            for task, (classnames, templates) in self.tasks.items():
                labels = torch.tensor([l[task] for l in data.extra["labels"]])
                out[f"{prefix}zeroshot_{task}"] = zeroshot_metrics(feats, labels, ex.classifier(classnames, templates))["top1"]
                out[f"chance_{prefix}zeroshot_{task}"] = 1.0 / len(classnames)
            if prefix:
                captions = ex.text_features([c[0] for c in data.captions])
                recall = retrieval_recall(feats, captions, torch.arange(len(data)), ks=(1, 5))
                out.update({prefix + k: v for k, v in recall.items()})
        return out

