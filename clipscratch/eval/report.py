"""Results to JSON and CSV; figures to PNG."""
from __future__ import annotations

import csv
import json
import os
from typing import Dict, List, Sequence


def write_results(out_dir: str, name: str, results: dict, rows: Sequence[dict] = ()) -> Dict[str, str]:
    os.makedirs(out_dir, exist_ok=True)
    paths = {"json": os.path.join(out_dir, f"{name}.json")}
    with open(paths["json"], "w") as f:
        json.dump(results, f, indent=2, default=float)
    if rows:
        paths["csv"] = os.path.join(out_dir, f"{name}.csv")
        keys = list(dict.fromkeys(k for r in rows for k in r))
        with open(paths["csv"], "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=keys)
            writer.writeheader()
            writer.writerows(rows)
    return paths


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figure(figsize=(5.5, 3.8), **kwargs):
    """A new (figure, axes) on the non-interactive backend."""
    return _plt().subplots(figsize=figsize, **kwargs)


def save_figure(fig, path: str) -> str:
    """Lay out, write the PNG, free the figure."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _plt().close(fig)
    return path


def plot_confusion(matrix, classnames: List[str], path: str, title: str) -> str:
    n = len(classnames)
    fig, ax = figure((max(4, 0.45 * n + 2), max(3.5, 0.45 * n + 1.5)))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(n), classnames, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(n), classnames, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 20:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, int(matrix[i][j]), ha="center", va="center", fontsize=6)
    ax.set_title(title, fontsize=9)
    return save_figure(fig, path)


def plot_accuracy_vs_shots(series: Dict[str, Dict[int, float]], path: str, title: str, baselines: Dict[str, float] = None,
                           xlabel: str = "shots per class") -> str:
    fig, ax = figure()
    for label, points in series.items():
        ks = sorted(points)
        ax.plot(ks, [points[k] for k in ks], marker="o", label=label)
    ax.set_xscale("log", base=2)
    for label, value in (baselines or {}).items():
        ax.axhline(value, linestyle="--", color="grey")
        # x in axes fractions, y in data: the label stays inside the frame whatever the x scale
        ax.text(0.01, value, f" {label}", va="bottom", fontsize=8, color="grey", transform=ax.get_yaxis_transform())
    ax.set_xlabel(xlabel)
    ax.set_ylabel("top-1 accuracy")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_bars(values: Dict[str, float], path: str, title: str) -> str:
    fig, ax = figure((max(4, 1.3 * len(values)), 3.5))
    ax.bar(range(len(values)), list(values.values()))
    ax.set_xticks(range(len(values)), list(values), rotation=20, ha="right", fontsize=7)
    ax.set_ylabel("top-1 accuracy")
    ax.set_title(title, fontsize=9)
    return save_figure(fig, path)


def markdown_table(series: Dict[str, Dict[int, float]], baselines: Dict[str, float]) -> str:
    """Methods as rows, shot counts as columns (a blank where a method was not run at that k),
    then one row per baseline."""
    shots = sorted({k for points in series.values() for k in points})
    lines = ["| method | " + " | ".join(f"k={k}" for k in shots) + " |", "|---|" + "---|" * len(shots)]
    for method, points in series.items():
        lines.append(f"| {method} | " + " | ".join(f"{points[k]:.3f}" if k in points else "" for k in shots) + " |")
    for name, value in baselines.items():
        lines.append(f"| {name} | {value:.3f}" + " |" * len(shots))
    return "\n".join(lines)


def markdown_rows(rows: Sequence[dict], columns: List[str]) -> str:
    """A markdown table of the given columns (floats with 3 decimals, None blank)."""
    def cell(v):
        return "" if v is None else f"{v:.3f}" if isinstance(v, float) else f"{v:,}" if isinstance(v, int) else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def plot_captions(images: List, texts: List[str], path: str, title: str, size: int = 224) -> str:
    """PNG: each image with its text below it, in one row."""
    import textwrap

    fig, axes = figure((3.0 * len(images), 5.0), ncols=len(images), squeeze=False)
    for ax, image, text in zip(axes[0], images, texts):
        ax.imshow(image.convert("RGB").resize((size, size)))
        ax.set_xlabel("\n".join(textwrap.fill(line, 34) for line in text.splitlines()), fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=9)
    return save_figure(fig, path)
