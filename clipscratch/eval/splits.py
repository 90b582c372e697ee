"""Disjoint train / validation / test parts of an evaluation source.

* A source with its own split (official torchvision splits, ``train/ val/ test/`` folders, a
  ``split`` column or field) keeps it; a missing validation part is carved from train.
* Otherwise a seeded split: 70% train, 10% validation, 20% test of each class (stratified),
  decided by the sha1 of ``seed`` and each image's key (the hash of its bytes), so it is the
  same on every run and machine, whatever order the files are listed in, and identical images
  (and all captions of one photo) always land on the same side.

Methods that fit on training data call ``Splits.check_fit``: it refuses an empty part, or
train and test sharing an image.
"""
from __future__ import annotations

import hashlib
from collections import defaultdict
from typing import Dict, List, Optional

from ..errors import ClipscratchError
from .datasets import SPLIT_NAMES, EvalData

FRACTIONS = {"test": 0.2, "val": 0.1}  # the rest is train
VAL_FROM_TRAIN = 0.125  # of a declared train part, when the source declares no validation part


class Splits:
    """The parts of one source, made on first use: the test part of a source with its own
    split needs no image hashing; train and validation (and the seeded split) do."""

    def __init__(self, data: EvalData, seed: int = 0):
        self.data, self.seed = data, seed
        self._assignment: Optional[List[str]] = None
        self._parts: Dict[str, EvalData] = {}
        if data.declared_splits is None:
            self.how = f"seeded split by image (seed {seed}, 70/10/20 per class)"
        elif "val" in data.declared_splits:
            self.how = "the source's own split"
        else:
            self.how = f"the source's own split, validation carved from train (seed {seed})"

    def __getitem__(self, name: str) -> EvalData:
        if name not in self._parts:
            if self.data.declared_splits is not None and name == "test":
                assignment = self.data.declared_splits
            else:
                assignment = self.assignment()
            self._parts[name] = self.data.subset([i for i, s in enumerate(assignment) if s == name], name)
        return self._parts[name]

    def assignment(self) -> List[str]:
        if self._assignment is None:
            data, seed = self.data, self.seed
            labels = data.labels.tolist() if data.labels is not None else None
            if data.declared_splits is None:
                self._assignment = seeded_assignment(data.keys, labels, FRACTIONS, seed)
            else:
                assignment = list(data.declared_splits)
                if "val" not in assignment:
                    train = [i for i, s in enumerate(assignment) if s == "train"]
                    keys = data.subset(train, "train").keys
                    carved = seeded_assignment(keys, None if labels is None else [labels[i] for i in train],
                                               {"val": VAL_FROM_TRAIN}, seed)
                    for i, part in zip(train, carved):
                        assignment[i] = part
                self._assignment = assignment
        return self._assignment

    def counts(self) -> Dict[str, int]:
        return {f"{name}_images": len(self[name]) for name in SPLIT_NAMES}

    def describe(self) -> str:
        c = self.counts()
        return f"{self.data.name}: {self.how}: train {c['train_images']}, val {c['val_images']}, test {c['test_images']} images"

    def check_fit(self, method: str, needs_val: bool = False) -> None:
        """One clear error when a method that fits on training data cannot do so honestly: an
        empty part, or one image (same bytes) in two parts."""
        wanted = ["train", "test"] + (["val"] if needs_val else [])
        empty = [name for name in wanted if len(self[name]) == 0]
        if empty:
            raise ClipscratchError(f"{method} fits on training data and scores the test part, but the {' and '.join(empty)} "
                                   f"part of {self.data.name} is empty ({self.how})")
        seen: Dict[str, str] = {}
        for part in SPLIT_NAMES:
            for key in set(self[part].keys):
                if key in seen:
                    raise ClipscratchError(f"{method}: {self.data.name} has the same image in its {seen[key]} and {part} "
                                           f"parts; remove the duplicates so that nothing scored was fit on")
                seen[key] = part


def _rank(seed: int, key: str) -> str:
    return hashlib.sha1(f"{seed}:{key}".encode()).hexdigest()


def seeded_assignment(keys: List[str], labels: Optional[List[int]], fractions: Dict[str, float], seed: int,
                      rest: str = "train") -> List[str]:
    """A part name per image: within each class, distinct keys ordered by sha1(seed, key) take
    ``n * fraction`` (rounded half up) places per named part in turn, the rest go to ``rest``."""
    first_label: Dict[str, int] = {}
    for i, key in enumerate(keys):
        first_label.setdefault(key, labels[i] if labels is not None else 0)
    by_class: Dict[int, List[str]] = defaultdict(list)
    for key, label in first_label.items():
        by_class[label].append(key)
    part_of: Dict[str, str] = {}
    for members in by_class.values():
        members.sort(key=lambda k: _rank(seed, k))
        start = 0
        for part, fraction in fractions.items():
            take = int(len(members) * fraction + 0.5)  # half up: a class of 4 gives one of its images at 1/8
            for key in members[start : start + take]:
                part_of[key] = part
            start += take
        for key in members[start:]:
            part_of[key] = rest
    return [part_of[k] for k in keys]
