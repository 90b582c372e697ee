"""Pretrain CLIP on image-caption webdataset shards.

    accelerate launch train.py                                   # embedded default: synthetic shapes, tiny ViT, CPU minutes
    accelerate launch train.py --config configs/cc3m_vit_b32.yaml
    accelerate launch train.py --config X.yaml optim.lr=1e-3 data.batch_size=256
    accelerate launch train.py --config X.yaml --resume latest   # continue after a crash or kill

Any config field can be overridden as key.sub=value; `--print-config` shows them all.
"""
import argparse
import sys

from clipscratch.errors import cli_errors
from clipscratch.train.config import load_config, to_dict

from clipscratch.train.config import DEFAULT_RUN  # noqa: E402  (the embedded default, = configs/default.yaml)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML config (see configs/); without it, the embedded default run")
    parser.add_argument("--resume", help="'latest' (the run's newest checkpoint, if any) or a checkpoint directory")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. optim.lr=5e-4")
    return parser.parse_args(argv)


@cli_errors
def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    cfg = load_config(args.config, args.overrides, base=None if args.config else DEFAULT_RUN)
    if args.print_config:
        import yaml

        print(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        return
    from clipscratch.train.loop import run

    results = run(cfg, resume=args.resume)
    if results:
        report(results)


def report(results: dict) -> None:
    print("\nresults on held-out data:")
    for key, value in results.items():
        if key.startswith(("zeroshot_", "val_", "unseen_pairs_", "text_to_image", "image_to_text")):
            task = key.split("zeroshot_")[-1]
            chance = results.get("chance_" + task) if "zeroshot_" in key else None
            print(f"  {key:<32}{value:7.3f}" + (f"   (chance {chance:.3f})" if chance else ""))
    if results.get("skipped"):
        print("  skipped input: " + ", ".join(f"{n} {k}" for k, n in results["skipped"].items()))
    print(f"checkpoint: {results['checkpoint']}  (clipscratch.load() reads it)")
    print(f"training curves: {results['curves']}")


if __name__ == "__main__":
    main()
