"""Metrics to JSONL and TensorBoard, and PNG training curves."""
from __future__ import annotations

import json
import os
from typing import Dict, List, Optional, Tuple

import torch


def gpu_memory(device: torch.device) -> Dict[str, float]:
    """On a CUDA device, the most GPU memory the process has held since it started (GiB, what
    the caching allocator reserved: cached blocks and CUDA graphs' pools included); else nothing."""
    if torch.device(device).type != "cuda":
        return {}
    return {"gpu_peak_gib": torch.cuda.max_memory_reserved(device) / 2 ** 30}


class MetricsLogger:
    def __init__(self, output_dir: str, enabled: bool = True):
        self.enabled = enabled
        self.path = os.path.join(output_dir, "metrics.jsonl")
        self._tb = None
        if enabled:
            os.makedirs(output_dir, exist_ok=True)
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(os.path.join(output_dir, "tensorboard"))
            except ImportError:  # tensorboard is optional at run time
                self._tb = None

    def log(self, step: int, metrics: Dict[str, float]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
        if self._tb is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)):
                    self._tb.add_scalar(k, v, step)

    def truncate_after(self, step: int) -> None:
        """On resume, drop records written after the checkpoint's step (they will be written again)."""
        if not (self.enabled and os.path.exists(self.path)):
            return
        with open(self.path) as f:
            rows = [line for line in f if line.strip() and json.loads(line)["step"] <= step]
        with open(self.path, "w") as f:
            f.writelines(rows)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_metrics(path: str) -> List[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


BASE_PANELS = [("train loss", ["loss"]), ("learning rate", ["lr"]), ("logit scale", ["scale"])]


def plot_curves(metrics_path: str, png_path: str, panels: List[Tuple[str, List[str]]]) -> Optional[str]:
    """One panel per (title, metric keys) that has any logged value; None when nothing was logged."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_path) if os.path.exists(metrics_path) else []
    panels = [(title, [k for k in keys if any(k in r for r in rows)]) for title, keys in BASE_PANELS + list(panels)]
    panels = [(title, keys) for title, keys in panels if keys]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2), squeeze=False)
    for ax, (title, keys) in zip(axes[0], panels):
        for key in keys:
            pts = [(r["step"], r[key]) for r in rows if key in r]
            ax.plot(*zip(*pts), marker="o" if len(pts) < 50 else None, label=key)
        if len(keys) > 1:
            ax.legend(fontsize=7)
        ax.set_title(title)
        ax.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    return png_path
