"""Metrics to JSONL and TensorBoard, and PNG training curves."""
from __future__ import annotations

import json
import os
from typing import Dict, List


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


def plot_curves(metrics_path: str, png_path: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_path)
    panels = [("loss", "train loss"), ("val_loss", "validation loss"), ("lr", "learning rate"), ("scale", "logit scale"),
              ("text_to_image_R@1", "retrieval R@1 (text->image)"), ("zeroshot_colour", "zero-shot accuracy")]
    panels = [(k, t) for k, t in panels if any(k in r for r in rows)]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2))
    for ax, (key, title) in zip(axes if len(panels) > 1 else [axes], panels):
        if key == "zeroshot_colour":
            for task in ("colour", "shape", "count", "position"):
                pts = [(r["step"], r[f"zeroshot_{task}"]) for r in rows if f"zeroshot_{task}" in r]
                ax.plot(*zip(*pts), marker="o", label=task)
            ax.legend(fontsize=7)
        else:
            pts = [(r["step"], r[key]) for r in rows if key in r]
            ax.plot(*zip(*pts), marker="o" if key != "loss" else None)
        ax.set_title(title)
        ax.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    return png_path
