"""The evaluation suite: one model, one dataset spec, one feature cache, many methods.

Every method module exposes ``add_arguments(parser)`` and ``run(suite, args) -> dict``
and reaches data, features and output only through the Suite.
"""
from __future__ import annotations

import os
from typing import Callable, Dict, Optional

from . import binary, clipscore, fewshot, gradcam, linear_probe, retrieval, tip_adapter, zeroshot
from .datasets import EvalData, from_spec
from .features import FeatureExtractor
from .report import plot_accuracy_vs_shots, plot_bars, plot_confusion, write_results

METHODS = {
    "zeroshot": zeroshot,
    "retrieval": retrieval,
    "linear-probe": linear_probe,
    "fewshot": fewshot,
    "tip-adapter": tip_adapter,
    "gradcam": gradcam,
    "clipscore": clipscore,
    "binary": binary,
}


class Suite:
    def __init__(self, model, preprocess: Callable, dataset: str, out_dir: str, device="cpu", root: str = "data",
                 download: bool = False, batch_size: int = 128, workers: int = 0, cache_dir: Optional[str] = None):
        self.model, self.preprocess, self.device = model.to(device).eval(), preprocess, device
        self.dataset_spec, self.root, self.download = dataset, root, download
        self.out_dir = out_dir
        os.makedirs(out_dir, exist_ok=True)
        self.extractor = FeatureExtractor(self.model, preprocess, device, batch_size, workers, cache_dir)
        self._data: Dict[str, EvalData] = {}

    def data(self, split: str) -> EvalData:
        if split not in self._data:
            self._data[split] = from_spec(self.dataset_spec, split, self.root, self.download)
        return self._data[split]

    def path(self, name: str) -> str:
        return os.path.join(self.out_dir, name)

    def save(self, name: str, results: dict, rows=()) -> dict:
        paths = write_results(self.out_dir, name, results, rows)
        print(f"  results: {', '.join(paths.values())}")
        return results

    def plot_confusion(self, matrix, classnames, name, title):
        return plot_confusion(matrix, classnames, self.path(name + ".png"), title)

    def plot_shots(self, series, name, title, baselines=None):
        return plot_accuracy_vs_shots(series, self.path(name + ".png"), title, baselines)

    def plot_bars(self, values, name, title):
        return plot_bars(values, self.path(name + ".png"), title)
