"""A finetuning study in one command: zero-shot, the linear probe, few-shot finetuning of chosen
parts over shot counts, and Tip-Adapter / -F, on one source; one table (method x shots) and
the accuracy-vs-shots PNGs.

    python evaluate.py study --model CKPT --dataset imagefolder:mnist-10k \\
        --shots 1 5 10 15 20 25 30 40 60 --tip-shots 1 2 4 8 16

Every method fits on the train part only (Tip-Adapter's alpha and beta and the probe's L2
strength on the validation part) and scores the same test part.
"""
from __future__ import annotations

from . import fewshot, tip_adapter
from .args import positive_int
from .linear_probe import DEFAULT_CS, linear_probe
from .report import markdown_table


def add_arguments(p) -> None:
    p.add_argument("--parts", nargs="+", default=["text_projection", "image_projection", "text", "image"],
                   help="parts to finetune (as fewshot --parts)")
    p.add_argument("--shots", type=positive_int, nargs="+", default=[1, 5, 10, 15, 20, 25, 30, 40, 60],
                   help="examples per class for few-shot finetuning")
    p.add_argument("--tip-shots", type=positive_int, nargs="+", default=[1, 2, 4, 8, 16],
                   help="examples per class for Tip-Adapter")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--epochs", type=positive_int, default=20, help="few-shot finetuning epochs")
    p.add_argument("--tip-epochs", type=positive_int, default=20, help="Tip-Adapter-F epochs")
    p.add_argument("--lr", type=float, default=1e-4)


def run(suite, args) -> dict:
    train, val, test = suite.fit_parts("study", needs_val=True)
    f = suite.extractor.image_features
    probe = linear_probe(f(train), train.labels, f(val), val.labels, f(test), test.labels, DEFAULT_CS)
    print(f"  linear probe top-1 {probe['top1']:.4f} (C={probe['C']:g})")
    fs_rows, fs_series, zs = fewshot.sweep(suite, args.parts, args.shots, args.seeds, args.epochs, args.lr)
    tip_rows, tip_series, _ = tip_adapter.sweep(suite, args.tip_shots, args.seeds, args.tip_epochs)
    baselines = {"zero-shot": zs, f"linear probe ({len(train) + len(val)} images)": probe["top1"]}
    suite.plot_shots(fs_series, "study_fewshot", f"few-shot finetuning of CLIP's parts on {test.name}", baselines)
    suite.plot_shots(tip_series, "study_tip_adapter", f"Tip-Adapter on {test.name}", baselines)
    series = {**{f"finetune {p}": s for p, s in fs_series.items()}, **tip_series}
    table = markdown_table(series, {"zero-shot": zs, "linear probe (all training images)": probe["top1"]})
    with open(suite.path("study.md"), "w") as out:
        out.write(table + "\n")
    print(table)
    rows = [{"method": "zero-shot", "shots": 0, "top1": zs}, {"method": "linear probe", "shots": -1, "top1": probe["top1"]}]
    rows += [{"method": f"finetune {r['part']}", **{k: v for k, v in r.items() if k != "part"}} for r in fs_rows] + tip_rows
    return suite.save("study", {"dataset": test.name, "zeroshot_top1": zs, "linear_probe": probe, "mean_top1": series}, rows)
