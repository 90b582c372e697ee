"""Evaluation datasets: one small record per dataset with images, labels, class names,
prompt templates and (where present) captions, whatever the source.

Spec strings name a dataset on the command line:

    digits                     scikit-learn's bundled 8x8 digits (no download)
    shapes:TASK                fresh coloured-shape images; TASK = colour | shape | count | position | plural (binary)
    shapes-unseen:TASK         the same, with test images only of colour-shape pairs held out of training
    imagefolder:DIR            one sub-folder of images per class
    csv:FILE / jsonl:FILE      image + label (class name or index) and/or caption columns
    wds:PATTERN                webdataset shards (txt captions; json "label" if present)
    mnist, cifar10, cifar100, flowers102, food101, oxfordiiitpet, stl10, eurosat
                               torchvision datasets under --root (--download fetches them)
"""
from __future__ import annotations

import csv
import json
import os
import random
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from PIL import Image

from ..errors import ClipscratchError

def _load_prompts() -> dict:
    """Class names and templates per dataset; templates are stored with "{c}" and used with "{}"."""
    with open(os.path.join(os.path.dirname(__file__), "prompts.json")) as f:
        prompts = json.load(f)
    for entry in prompts.values():
        if isinstance(entry, dict):
            entry["templates"] = [t.replace("{c}", "{}") for t in entry["templates"]]
    return prompts


_PROMPTS = _load_prompts()
DEFAULT_TEMPLATES = ["a photo of a {}."]


@dataclass
class EvalData:
    name: str  # identifies the data (with the split) in feature-cache keys
    images: Sequence  # images[i] -> PIL image
    labels: Optional[torch.Tensor] = None  # [N] class indices
    classnames: List[str] = field(default_factory=list)
    templates: List[str] = field(default_factory=lambda: list(DEFAULT_TEMPLATES))
    captions: Optional[List[List[str]]] = None  # several captions per image
    extra: Dict[str, list] = field(default_factory=dict)  # e.g. object boxes

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, indices: Sequence[int], tag: str) -> "EvalData":
        idx = list(indices)
        return EvalData(
            name=f"{self.name}#{tag}", images=[self.images[i] for i in idx],
            labels=None if self.labels is None else self.labels[idx], classnames=self.classnames,
            templates=self.templates, captions=None if self.captions is None else [self.captions[i] for i in idx],
            extra={k: [v[i] for i in idx] for k, v in self.extra.items()},
        )


class _LazyImages:
    """Opens image files on access; a corrupt file is one clear error naming it."""

    def __init__(self, paths: List[str]):
        self.paths = paths

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        try:
            with Image.open(self.paths[i]) as im:
                return im.convert("RGB")
        except (OSError, ValueError) as e:
            raise ClipscratchError(f"{self.paths[i]}: cannot read image ({type(e).__name__})") from None


def digits(split: str = "test", seed: int = 0) -> EvalData:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    order = np.random.default_rng(seed).permutation(len(bunch.target))
    half = len(order) // 2
    idx = order[half:] if split == "test" else order[:half]
    images = [Image.fromarray((bunch.images[i] * 255 / 16).astype(np.uint8), mode="L").convert("RGB") for i in idx]
    p = _PROMPTS["digits"]
    return EvalData(f"digits-{split}", images, torch.tensor(bunch.target[idx]), p["classnames"], p["templates"])


def shapes(task: str = "colour", split: str = "test", n: int = 600, unseen_pairs: bool = False) -> EvalData:
    """Fresh coloured-shape images of the colour-shape pairs seen in training (``train`` and
    ``test`` differ in seed); with ``unseen_pairs`` the test split holds only the held-out pairs."""
    from ..data.synthetic import TASKS, generate

    if task not in TASKS and task != "plural":
        raise ClipscratchError(f"unknown shapes task {task!r}; use one of {sorted(TASKS) + ['plural']}")
    samples = list(generate(n, 12345 if split == "test" else 777, held_out=(unseen_pairs and split == "test")))
    if task == "plural":  # a binary task: one shape (0) or several (1)
        classnames, templates = ["one shape", "several shapes"], ["a photo of {}"]
        labels = torch.tensor([int(s.count > 1) for s in samples])
    else:
        classnames, templates = TASKS[task]
        labels = torch.tensor([s.labels()[task] for s in samples])
    return EvalData(
        f"shapes{'-unseen' if unseen_pairs else ''}-{task}-{split}-{n}", [s.image for s in samples], labels,
        list(classnames), list(templates), captions=[[s.caption] for s in samples],
        extra={"boxes": [s.boxes for s in samples], "meta": [s.meta() for s in samples]},
    )


def imagefolder(root: str) -> EvalData:
    from ..data.make_shards import IMAGE_EXTENSIONS

    if not os.path.isdir(root):
        raise ClipscratchError(f"{root}: not a directory")
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    paths, labels = [], []
    for label, name in enumerate(classes):
        for f in sorted(os.listdir(os.path.join(root, name))):
            if f.lower().endswith(IMAGE_EXTENSIONS):
                paths.append(os.path.join(root, name, f))
                labels.append(label)
    if not paths:
        raise ClipscratchError(f"{root}: no images in class sub-folders")
    return EvalData(f"imagefolder:{os.path.abspath(root)}", _LazyImages(paths), torch.tensor(labels),
                    [c.replace("_", " ") for c in classes])


def table(path: str) -> EvalData:
    """CSV/TSV/JSONL rows: ``image`` plus ``label`` and/or ``caption`` (repeat rows for several captions)."""
    if not os.path.exists(path):
        raise ClipscratchError(f"{path}: file not found")
    if path.endswith((".jsonl", ".json")):
        rows = [json.loads(line) for line in open(path) if line.strip()]
    else:
        rows = list(csv.DictReader(open(path, newline=""), delimiter="\t" if path.endswith(".tsv") else ","))
    if not rows or "image" not in rows[0]:
        raise ClipscratchError(f"{path}: needs an 'image' column (and 'label' and/or 'caption')")
    base = os.path.dirname(os.path.abspath(path))
    order, captions, labels = [], {}, {}
    for r in rows:
        img = r["image"]
        if img not in captions:
            order.append(img)
            captions[img] = []
        if r.get("caption"):
            captions[img].append(str(r["caption"]))
        if r.get("label") not in (None, ""):
            labels[img] = str(r["label"])
    classnames: List[str] = []
    label_tensor = None
    if labels:
        if len(labels) != len(order):
            raise ClipscratchError(f"{path}: some images have a label and some do not")
        values = [labels[i] for i in order]
        if all(v.isdigit() for v in values):
            label_tensor = torch.tensor([int(v) for v in values])
            classnames = [str(i) for i in range(int(label_tensor.max()) + 1)]
        else:
            classnames = sorted(set(values))
            label_tensor = torch.tensor([classnames.index(v) for v in values])
    paths = [p if os.path.isabs(p) else os.path.join(base, p) for p in order]
    caps = [captions[i] for i in order] if any(captions.values()) else None
    return EvalData(f"table:{os.path.abspath(path)}", _LazyImages(paths), label_tensor, classnames, captions=caps)


def shards(pattern: str) -> EvalData:
    import io

    import webdataset as wds

    from ..data.pipeline import expand_sources

    urls = [u for src in expand_sources(pattern) for u in src]
    images, captions, labels = [], [], []
    for s in wds.WebDataset(urls, shardshuffle=False, empty_check=False, handler=wds.warn_and_continue):
        raw = next((s[k] for k in ("jpg", "jpeg", "png", "webp") if k in s), None)
        if raw is None:
            continue
        try:
            images.append(Image.open(io.BytesIO(raw)).convert("RGB"))
        except OSError:
            continue
        captions.append([s["txt"].decode("utf-8", "replace").strip()] if "txt" in s else [])
        meta = json.loads(s["json"]) if "json" in s else {}
        labels.append(meta.get("label"))
    has_labels = labels and all(isinstance(l, int) for l in labels)
    label_tensor = torch.tensor(labels) if has_labels else None
    classnames = [str(i) for i in range(int(label_tensor.max()) + 1)] if has_labels else []
    return EvalData(f"wds:{pattern}", images, label_tensor, classnames, captions=captions if any(captions) else None)


_TORCHVISION = {
    "mnist": ("MNIST", {"train": {"train": True}, "test": {"train": False}}),
    "cifar10": ("CIFAR10", {"train": {"train": True}, "test": {"train": False}}),
    "cifar100": ("CIFAR100", {"train": {"train": True}, "test": {"train": False}}),
    "flowers102": ("Flowers102", {"train": {"split": "train"}, "test": {"split": "test"}}),
    "food101": ("Food101", {"train": {"split": "train"}, "test": {"split": "test"}}),
    "oxfordiiitpet": ("OxfordIIITPet", {"train": {"split": "trainval"}, "test": {"split": "test"}}),
    "stl10": ("STL10", {"train": {"split": "train"}, "test": {"split": "test"}}),
    "eurosat": ("EuroSAT", {"train": {}, "test": {}}),
}


class _TorchvisionImages:
    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        image = self.dataset[i][0]
        return image.convert("RGB") if isinstance(image, Image.Image) else image


def torchvision_dataset(name: str, root: str, split: str, download: bool) -> EvalData:
    import torchvision.datasets as tvd

    cls_name, splits = _TORCHVISION[name]
    try:
        ds = getattr(tvd, cls_name)(root=root, download=download, **splits[split])
    except RuntimeError as e:
        raise ClipscratchError(f"{name} not found under {root!r} ({str(e).splitlines()[0]}); pass --download to fetch it "
                               f"(needs internet) or --root pointing at a copy") from None
    prompts = _PROMPTS[name]
    classnames = prompts.get("classnames") or [c.replace("_", " ") for c in getattr(ds, "classes")]
    labels = torch.tensor([int(t) for t in _targets(ds)])
    return EvalData(f"{name}-{split}", _TorchvisionImages(ds), labels, classnames, prompts["templates"])


def _targets(ds):
    for attr in ("targets", "labels", "_labels"):
        if hasattr(ds, attr):
            return list(getattr(ds, attr))
    return [ds[i][1] for i in range(len(ds))]


def from_spec(spec: str, split: str = "test", root: str = "data", download: bool = False) -> EvalData:
    kind, _, arg = spec.partition(":")
    if kind == "digits":
        return digits(split)
    if kind in ("shapes", "shapes-unseen"):
        return shapes(arg or "colour", split, unseen_pairs=(kind == "shapes-unseen"))
    if kind == "imagefolder":
        return imagefolder(arg)
    if kind in ("csv", "tsv", "jsonl"):
        return table(arg)
    if kind == "wds":
        return shards(arg)
    if kind in _TORCHVISION:
        return torchvision_dataset(kind, root, split, download)
    raise ClipscratchError(f"unknown dataset {spec!r}; use digits, shapes:TASK, shapes-unseen:TASK, imagefolder:DIR, csv:FILE, jsonl:FILE, "
                           f"wds:PATTERN or one of {', '.join(_TORCHVISION)}")


def few_shot_indices(labels: torch.Tensor, k: int, seed: int) -> List[int]:
    """k random examples of each class (all of a class if it has fewer)."""
    rng = random.Random(seed)
    chosen = []
    for c in sorted(labels.unique().tolist()):
        members = (labels == c).nonzero().flatten().tolist()
        chosen += rng.sample(members, min(k, len(members)))
    return chosen
