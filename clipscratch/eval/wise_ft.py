"""WiSE-FT (Wortsman et al., 2022): weight-space ensembles of a model and its finetuned copy.

``(1 - alpha) * start + alpha * finetuned`` for every floating-point tensor of the state dict
(BatchNorm statistics included); alpha 0 gives the start model and 1 the finetuned one,
exactly. Sweeping alpha trades accuracy on the finetuning task against what the model knew.
"""
from __future__ import annotations

import copy
from typing import Callable, Dict, List, Sequence

import torch


def interpolate(start: Dict[str, torch.Tensor], finetuned: Dict[str, torch.Tensor], alpha: float) -> Dict[str, torch.Tensor]:
    """The state dict at ``alpha`` between two of the same shapes (integer tensors from ``finetuned``)."""
    if set(start) != set(finetuned):
        raise ValueError("the two state dicts hold different keys")
    out = {}
    for name, a in start.items():
        b = finetuned[name]
        out[name] = (1 - alpha) * a + alpha * b if a.is_floating_point() else b.clone()
    return out


def ensemble(start_model, finetuned_model, alpha: float):
    """A copy of ``finetuned_model`` holding the weights at ``alpha``."""
    model = copy.deepcopy(finetuned_model)
    model.load_state_dict(interpolate(start_model.state_dict(), finetuned_model.state_dict(), alpha))
    return model.eval()


def sweep(start_model, finetuned_model, alphas: Sequence[float], score: Callable[[torch.nn.Module], Dict[str, float]]
          ) -> List[dict]:
    """One row per alpha: ``{"alpha": a, **score(ensemble at a)}``."""
    return [{"alpha": float(alpha), **score(ensemble(start_model, finetuned_model, alpha))} for alpha in alphas]


def plot(rows: List[dict], target: str, others: Sequence[str], path: str, title: str) -> str:
    """Accuracy against alpha: the finetuning task and each of the model's original tasks."""
    from .report import figure, save_figure

    fig, ax = figure()
    alphas = [r["alpha"] for r in rows]
    ax.plot(alphas, [r[target] for r in rows], marker="o", linewidth=2, label=f"{target} (finetuning task)")
    for name in others:
        ax.plot(alphas, [r[name] for r in rows], marker=".", linestyle="--", label=name)
    ax.set_xlabel("alpha: (1 - alpha) * start + alpha * finetuned")
    ax.set_ylabel("top-1 accuracy")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    return save_figure(fig, path)
