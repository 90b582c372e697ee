"""Two training runs' loss curves in one PNG, and how far apart they are.

    python bench/compare_curves.py runs/a/metrics.jsonl runs/b/metrics.jsonl --labels bf16 fp8 --out curves.png
"""
import argparse
import json


def losses(path):
    with open(path) as f:
        return {r["step"]: r["loss"] for r in map(json.loads, f) if "loss" in r}


def smooth(values, k=5):
    return [sum(values[max(0, i - k + 1): i + 1]) / len(values[max(0, i - k + 1): i + 1]) for i in range(len(values))]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--labels", nargs=2, default=["a", "b"])
    p.add_argument("--out", required=True)
    args = p.parse_args()
    a, b = losses(args.a), losses(args.b)
    steps = sorted(set(a) & set(b))
    sa, sb = smooth([a[s] for s in steps]), smooth([b[s] for s in steps])
    gap = [abs(x - y) for x, y in zip(sa, sb)]
    last = len(steps) // 5
    print(f"{len(steps)} common logged steps; smoothed loss {args.labels[0]} {sa[-1]:.3f} vs {args.labels[1]} {sb[-1]:.3f} at step "
          f"{steps[-1]}; mean |gap| over the last fifth {sum(gap[-last:]) / max(1, last):.3f}, largest |gap| {max(gap):.3f}")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.8))
    for label, values in zip(args.labels, (sa, sb)):
        ax.plot(steps, values, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (5-point mean)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)


if __name__ == "__main__":
    main()
