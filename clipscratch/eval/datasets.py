"""Evaluation sources: images, labels, class names, prompt templates and captions, whatever
the source, each image with an identity (``key``) and, where the source has them, its
declared split. ``splits.py`` turns a source into disjoint train / validation / test parts.

Spec strings name a source on the command line:

    digits                     scikit-learn's bundled 8x8 digits (no download)
    shapes:TASK                fresh coloured-shape images; TASK = colour | shape | count | position | plural (binary)
    shapes-unseen:TASK         the same, with test images only of colour-shape pairs held out of training
    imagefolder:DIR            one sub-folder of images per class, or DIR/{train,val,test}/CLASS/...
    table:FILE (csv:, tsv:, jsonl:)
                               image + label and/or caption columns (several rows or captions per
                               image allowed), optional ``split`` column; Flickr's
                               ``image.jpg#N<TAB>caption`` files too
    wds:PATTERN                webdataset shards (make_shards' layout: captions and optional
                               ``split`` / ``label`` in each sample's json)
    mnist, cifar10, cifar100, flowers102, food101, oxfordiiitpet, stl10, eurosat
                               torchvision datasets under --root (--download fetches them)
"""
from __future__ import annotations

import hashlib
import json
import os
import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from PIL import Image

from ..data.captions import read_table
from ..data.images import IMAGE_EXTENSIONS, open_image
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
    name: str  # identifies the source (and, after splitting, the part) in feature-cache keys
    images: Sequence  # images[i] -> PIL RGB image
    labels: Optional[torch.Tensor] = None  # [N] class indices
    classnames: List[str] = field(default_factory=list)
    templates: List[str] = field(default_factory=lambda: list(DEFAULT_TEMPLATES))
    captions: Optional[List[List[str]]] = None  # several captions per image
    extra: Dict[str, list] = field(default_factory=dict)  # e.g. object boxes
    declared_splits: Optional[List[str]] = None  # the source's own split of each image, if it has one
    _keys: Optional[List[str]] = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def keys(self) -> List[str]:
        """One identity per image: the sha1 of the file's bytes (or of the decoded pixels for
        in-memory images), or an official split's index. Equal keys mean the same image."""
        if self._keys is None:
            self._keys = image_keys(self.images)
        return self._keys

    def locators(self) -> List[str]:
        """Cheap identities for cache keys: path, size and mtime of files; else the keys."""
        paths = getattr(self.images, "paths", None)
        if paths is None:
            return self.keys
        return [f"{p}:{os.path.getsize(p)}:{os.path.getmtime(p)}" for p in paths]

    def subset(self, indices: Sequence[int], tag: str) -> "EvalData":
        idx = list(indices)
        images = self.images.subset(idx) if hasattr(self.images, "subset") else [self.images[i] for i in idx]
        return replace(
            self, name=f"{self.name}#{tag}", images=images,
            labels=None if self.labels is None else self.labels[idx],
            captions=None if self.captions is None else [self.captions[i] for i in idx],
            extra={k: [v[i] for i in idx] for k, v in self.extra.items()},
            declared_splits=None if self.declared_splits is None else [self.declared_splits[i] for i in idx],
            _keys=None if self._keys is None else [self._keys[i] for i in idx],
        )


class ImageFiles:
    """Image files opened on access (``data/images.open_image``); a corrupt file is one clear
    error naming it."""

    def __init__(self, paths: List[str]):
        self.paths = paths

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        path = self.paths[i]
        if not os.path.exists(path):
            raise ClipscratchError(f"{path}: image file not found")
        return open_image(path)

    def subset(self, idx: List[int]) -> "ImageFiles":
        return ImageFiles([self.paths[i] for i in idx])


def _file_sha1(path: str) -> str:
    if not os.path.exists(path):
        raise ClipscratchError(f"{path}: image file not found")
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def pixel_sha1(image: Image.Image) -> str:
    return hashlib.sha1(f"{image.size}".encode() + image.convert("RGB").tobytes()).hexdigest()


def image_keys(images: Sequence) -> List[str]:
    """sha1 of each file's bytes (read in threads) or of each in-memory image's pixels."""
    paths = getattr(images, "paths", None)
    if paths is not None:
        with ThreadPoolExecutor(8) as pool:
            return list(pool.map(_file_sha1, paths))
    return [pixel_sha1(images[i]) for i in range(len(images))]


def digits() -> EvalData:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = [Image.fromarray((im * 255 / 16).astype(np.uint8), mode="L").convert("RGB") for im in bunch.images]
    p = _PROMPTS["digits"]
    return EvalData("digits", images, torch.tensor(bunch.target), p["classnames"], p["templates"])


SHAPES_SEEDS = {"train": 777, "val": 778, "test": 12345}  # one seed per split: disjoint fresh images


def shapes(task: str = "colour", n: int = 600, unseen_pairs: bool = False) -> EvalData:
    """Fresh coloured-shape images, ``n`` per split, each split from its own seed; with
    ``unseen_pairs`` the test split holds only the colour-shape pairs held out of training."""
    from ..data.synthetic import TASKS, generate

    if task not in TASKS and task != "plural":
        raise ClipscratchError(f"unknown shapes task {task!r}; use one of {sorted(TASKS) + ['plural']}")
    samples, declared = [], []
    for split, seed in SHAPES_SEEDS.items():
        samples += list(generate(n, seed, held_out=(unseen_pairs and split == "test")))
        declared += [split] * n
    if task == "plural":  # a binary task: one shape (0) or several (1)
        classnames, templates = ["one shape", "several shapes"], ["a photo of {}"]
        labels = torch.tensor([int(s.count > 1) for s in samples])
    else:
        classnames, templates = TASKS[task]
        labels = torch.tensor([s.labels()[task] for s in samples])
    return EvalData(
        f"shapes{'-unseen' if unseen_pairs else ''}-{task}-{n}", [s.image for s in samples], labels,
        list(classnames), list(templates), captions=[[s.caption] for s in samples],
        extra={"boxes": [s.boxes for s in samples], "meta": [s.meta() for s in samples]}, declared_splits=declared,
    )


SPLIT_NAMES = ("train", "val", "test")
_SPLIT_ALIASES = {"validation": "val", "valid": "val", "dev": "val"}


def split_name(name: str, where: str) -> str:
    name = _SPLIT_ALIASES.get(name.strip().lower(), name.strip().lower())
    if name not in SPLIT_NAMES:
        raise ClipscratchError(f"{where}: unknown split {name!r}; use train, val (or dev/validation) or test")
    return name


def _class_folders(root: str) -> List[str]:
    return sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)) and not d.startswith("."))


def _images_in(folder: str) -> List[str]:
    return sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS))


def imagefolder(root: str) -> EvalData:
    """DIR/CLASS/*.jpg, or DIR/{train,val,test}/CLASS/*.jpg when the user has made the split, or
    DIR/*.jpg: unlabelled photos to look at (all in the test part)."""
    if not os.path.isdir(root):
        raise ClipscratchError(f"{root}: not a directory")
    top = _class_folders(root)
    declared_layout = bool(top) and set(top) <= set(SPLIT_NAMES) | set(_SPLIT_ALIASES) and any(
        _class_folders(os.path.join(root, d)) for d in top)
    parts = [(split_name(d, root), os.path.join(root, d)) for d in top] if declared_layout else [(None, root)]
    classes = sorted({c for _, folder in parts for c in _class_folders(folder)})
    paths, labels, declared = [], [], []
    for split, folder in parts:
        for label, name in enumerate(classes):
            if os.path.isdir(os.path.join(folder, name)):
                found = _images_in(os.path.join(folder, name))
                paths += found
                labels += [label] * len(found)
                declared += [split] * len(found)
    if not paths:
        loose = _images_in(root)
        if not loose:
            raise ClipscratchError(f"{root}: no images, neither in class sub-folders nor in the folder itself")
        # a folder of loose photos: unlabelled, all of it scored (zero-shot with --classes, Grad-CAM);
        # methods that fit refuse it, as it has no training part
        return EvalData(f"imagefolder:{os.path.abspath(root)}", ImageFiles(loose), declared_splits=["test"] * len(loose))
    return EvalData(f"imagefolder:{os.path.abspath(root)}", ImageFiles(paths), torch.tensor(labels),
                    [c.replace("_", " ") for c in classes], declared_splits=declared if declared_layout else None)


def _find_image(base: str, name: str) -> str:
    """A table's image path: absolute, relative to the table's folder, or in its images/ folder
    (the layout of Flickr8k's captions.txt beside Images/)."""
    if os.path.isabs(name):
        return name
    for folder in (base, os.path.join(base, "images"), os.path.join(base, "Images")):
        if os.path.exists(os.path.join(folder, name)):
            return os.path.join(folder, name)
    return os.path.join(base, name)


def table(path: str) -> EvalData:
    """Caption/label files (``data/captions.py`` reads every format), one record per image."""
    records = read_table(path)
    if not records:
        raise ClipscratchError(f"{path}: no rows")
    base = os.path.dirname(os.path.abspath(path))
    labelled = [r.label is not None for r in records]
    classnames: List[str] = []
    label_tensor = None
    if any(labelled):
        if not all(labelled):
            raise ClipscratchError(f"{path}: some images have a label and some do not")
        values = [r.label for r in records]
        if all(v.isdigit() for v in values):
            label_tensor = torch.tensor([int(v) for v in values])
            classnames = [str(i) for i in range(int(label_tensor.max()) + 1)]
        else:
            classnames = sorted(set(values))
            label_tensor = torch.tensor([classnames.index(v) for v in values])
    declared = None
    if any(r.split for r in records):
        missing = [r.image for r in records if not r.split]
        if missing:
            raise ClipscratchError(f"{path}: the split column is empty for {len(missing)} images, e.g. {missing[0]!r}")
        declared = [split_name(r.split, path) for r in records]
    captions = [r.captions for r in records] if any(r.captions for r in records) else None
    paths = [_find_image(base, r.image) for r in records]
    return EvalData(f"table:{os.path.abspath(path)}", ImageFiles(paths), label_tensor, classnames, captions=captions,
                    declared_splits=declared)


def shards(pattern: str) -> EvalData:
    """Webdataset shards. Samples with identical image bytes are one image with all their
    captions (shards written one sample per caption stay correct for retrieval)."""
    import webdataset as wds

    from ..data.pipeline import expand_sources

    urls = [u for src in expand_sources(pattern) for u in src]
    order: Dict[str, dict] = {}
    skipped = 0
    for s in wds.WebDataset(urls, shardshuffle=False, empty_check=False, handler=wds.warn_and_continue):
        raw = next((s[k] for k in ("jpg", "jpeg", "png", "webp") if k in s), None)
        if raw is None:
            skipped += 1
            continue
        meta = json.loads(s["json"]) if "json" in s else {}
        captions = [str(c) for c in meta.get("captions") or []]
        if not captions and "txt" in s:
            captions = [s["txt"].decode("utf-8", "replace").strip()]
        key = hashlib.sha1(raw).hexdigest()
        entry = order.setdefault(key, {"raw": raw, "captions": [], "label": meta.get("label"), "split": meta.get("split")})
        entry["captions"] += [c for c in captions if c and c not in entry["captions"]]
    images, keys = [], []
    for key, entry in order.items():
        try:
            images.append(open_image(entry["raw"], name=f"{pattern} sample"))
            keys.append(key)
        except ClipscratchError:
            skipped += 1
    entries = [order[k] for k in keys]
    if skipped:
        print(f"  {pattern}: skipped {skipped} samples without a readable image")
    if not entries:
        raise ClipscratchError(f"{pattern}: no readable samples")
    labels = [e["label"] for e in entries]
    has_labels = all(isinstance(l, int) for l in labels)
    label_tensor = torch.tensor(labels) if has_labels else None
    classnames = [str(i) for i in range(int(label_tensor.max()) + 1)] if has_labels else []
    splits = [e["split"] for e in entries]
    declared = [split_name(s, pattern) for s in splits] if all(isinstance(s, str) for s in splits) else None
    captions = [e["captions"] for e in entries]
    return EvalData(f"wds:{pattern}", images, label_tensor, classnames, captions=captions if any(captions) else None,
                    declared_splits=declared, _keys=keys)


_TORCHVISION = {  # official split arguments; EuroSAT has none and is split here
    "mnist": ("MNIST", {"train": {"train": True}, "test": {"train": False}}),
    "cifar10": ("CIFAR10", {"train": {"train": True}, "test": {"train": False}}),
    "cifar100": ("CIFAR100", {"train": {"train": True}, "test": {"train": False}}),
    "flowers102": ("Flowers102", {"train": {"split": "train"}, "val": {"split": "val"}, "test": {"split": "test"}}),
    "food101": ("Food101", {"train": {"split": "train"}, "test": {"split": "test"}}),
    "oxfordiiitpet": ("OxfordIIITPet", {"train": {"split": "trainval"}, "test": {"split": "test"}}),
    "stl10": ("STL10", {"train": {"split": "train"}, "test": {"split": "test"}}),
    "eurosat": ("EuroSAT", {None: {}}),
}


class _TorchvisionImages:
    """The images of one or more torchvision datasets, in order, as RGB PIL images."""

    def __init__(self, datasets, index=None):
        self.datasets = datasets
        self.index = index if index is not None else [(d, i) for d, ds in enumerate(datasets) for i in range(len(ds))]
        samples = [getattr(ds, "samples", None) for ds in datasets]
        if all(s is not None for s in samples):  # ImageFolder-style: files we can hash
            self.paths = [samples[d][i][0] for d, i in self.index]

    def __len__(self):
        return len(self.index)

    def __getitem__(self, i):
        d, j = self.index[i]
        image = self.datasets[d][j][0]
        return image.convert("RGB") if isinstance(image, Image.Image) else image

    def subset(self, idx: List[int]) -> "_TorchvisionImages":
        return _TorchvisionImages(self.datasets, [self.index[i] for i in idx])


def torchvision_dataset(name: str, root: str, download: bool) -> EvalData:
    import torchvision.datasets as tvd

    cls_name, splits = _TORCHVISION[name]
    parts = []
    for split, kwargs in splits.items():
        try:
            parts.append((split, getattr(tvd, cls_name)(root=root, download=download, **kwargs)))
        except RuntimeError as e:
            raise ClipscratchError(f"{name} not found under {root!r} ({str(e).splitlines()[0]}); pass --download to fetch it "
                                   f"(needs internet) or --root pointing at a copy") from None
    prompts = _PROMPTS[name]
    classnames = prompts.get("classnames") or [c.replace("_", " ") for c in getattr(parts[0][1], "classes")]
    labels = torch.tensor([int(t) for _, ds in parts for t in _targets(ds)])
    images = _TorchvisionImages([ds for _, ds in parts])
    official = parts[0][0] is not None
    declared = [split for split, ds in parts for _ in range(len(ds))] if official else None
    keys = [f"{name}/{split}/{i}" for split, ds in parts for i in range(len(ds))] if official else None
    return EvalData(name, images, labels, classnames, prompts["templates"], declared_splits=declared, _keys=keys)


def _targets(ds):
    for attr in ("targets", "labels", "_labels"):
        if hasattr(ds, attr):
            return list(getattr(ds, attr))
    return [ds[i][1] for i in range(len(ds))]


def from_spec(spec: str, root: str = "data", download: bool = False) -> EvalData:
    """The whole source a spec names (all splits); ``splits.make_splits`` divides it."""
    kind, _, arg = spec.partition(":")
    if kind == "digits":
        return digits()
    if kind in ("shapes", "shapes-unseen"):
        return shapes(arg or "colour", unseen_pairs=(kind == "shapes-unseen"))
    if kind == "imagefolder":
        return imagefolder(arg)
    if kind in ("table", "csv", "tsv", "jsonl"):
        return table(arg)
    if kind == "wds":
        return shards(arg)
    if kind in _TORCHVISION:
        return torchvision_dataset(kind, root, download)
    raise ClipscratchError(f"unknown dataset {spec!r}; use digits, shapes:TASK, shapes-unseen:TASK, imagefolder:DIR, table:FILE "
                           f"(csv:, tsv:, jsonl:), wds:PATTERN or one of {', '.join(_TORCHVISION)}")


def few_shot_indices(labels: torch.Tensor, k: int, seed: int) -> List[int]:
    """k random examples of each class (all of a class if it has fewer)."""
    rng = random.Random(seed)
    chosen = []
    for c in sorted(labels.unique().tolist()):
        members = (labels == c).nonzero().flatten().tolist()
        chosen += rng.sample(members, min(k, len(members)))
    return chosen
