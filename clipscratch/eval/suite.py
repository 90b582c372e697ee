"""The evaluation suite: one model, one dataset source split into train / val / test, one
feature cache, many methods.

Every method module exposes ``add_arguments(parser)`` and ``run(suite, args) -> dict``
and reaches data, features and output only through the Suite. Methods that score without
fitting take ``suite.test()``; methods that fit take ``suite.fit_parts(name)``, which refuses
a source that cannot be split honestly and records the part sizes in the results.
"""
from __future__ import annotations

import os
from typing import Callable, Dict, Optional, Tuple

from . import align_text, binary, caption, clipscore, fewshot, gradcam, linear_probe, retrieval, study, tip_adapter, zeroshot
from .datasets import EvalData, from_spec
from .features import FeatureExtractor
from .report import plot_accuracy_vs_shots, plot_bars, plot_confusion, write_results
from .splits import Splits

METHODS = {
    "zeroshot": zeroshot,
    "retrieval": retrieval,
    "linear-probe": linear_probe,
    "fewshot": fewshot,
    "tip-adapter": tip_adapter,
    "gradcam": gradcam,
    "clipscore": clipscore,
    "binary": binary,
    "study": study,
    "align-text": align_text,
    "caption": caption,
}


class Suite:
    def __init__(self, model, preprocess: Callable, dataset: str, out_dir: str, device="cpu", root: str = "data",
                 download: bool = False, batch_size: int = 128, workers: int = 0, cache_dir: Optional[str] = None):
        self.model, self.preprocess, self.device = model.to(device).eval(), preprocess, device
        self.dataset_spec, self.root, self.download = dataset, root, download
        self.out_dir = out_dir
        os.makedirs(out_dir, exist_ok=True)
        self.extractor = FeatureExtractor(self.model, preprocess, device, batch_size, workers, cache_dir)
        self._splits: Optional[Splits] = None
        self._counts: Dict[str, int] = {}

    @property
    def splits(self) -> Splits:
        if self._splits is None:
            self._splits = Splits(from_spec(self.dataset_spec, self.root, self.download))
        return self._splits

    def test(self) -> EvalData:
        """The part that methods score (nothing is fit on it)."""
        data = self.splits["test"]
        if not self._counts:
            print(f"  scoring the test part of {self.splits.data.name}: {len(data)} images ({self.splits.how})")
            self._counts = {"test_images": len(data)}
        return data

    def fit_parts(self, method: str, needs_val: bool = False) -> Tuple[EvalData, EvalData, EvalData]:
        """(train, val, test) for a method that fits on train (and val) and scores test."""
        self.splits.check_fit(method, needs_val)
        if "train_images" not in self._counts:
            print(f"  {self.splits.describe()}")
            self._counts = self.splits.counts()
        return self.splits["train"], self.splits["val"], self.splits["test"]

    def path(self, name: str) -> str:
        return os.path.join(self.out_dir, name)

    def save(self, name: str, results: dict, rows=()) -> dict:
        """JSON (with the number of images in each part used) and CSV under the output folder."""
        results = {**results, **self._counts}
        paths = write_results(self.out_dir, name, results, rows)
        print(f"  results: {', '.join(paths.values())}")
        return results

    def plot_confusion(self, matrix, classnames, name, title):
        return plot_confusion(matrix, classnames, self.path(name + ".png"), title)

    def plot_shots(self, series, name, title, baselines=None, xlabel="shots per class"):
        return plot_accuracy_vs_shots(series, self.path(name + ".png"), title, baselines, xlabel)

    def plot_bars(self, values, name, title):
        return plot_bars(values, self.path(name + ".png"), title)
