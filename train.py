"""Pretrain CLIP on image-caption webdataset shards.

    accelerate launch train.py                                   # the default run: configs/default.yaml (CPU minutes)
    accelerate launch train.py --config configs/cc3m_vit_b32.yaml
    accelerate launch train.py --config X.yaml optim.lr=1e-3 data.batch_size=256
    accelerate launch train.py --config X.yaml --resume latest   # continue after a crash or kill

Any config field can be overridden as key.sub=value; `--print-config` shows the resolved
configuration (what the run saves as train_config.yaml).
"""
import argparse
import os
import sys

from clipscratch.errors import cli_errors

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "default.yaml")


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="YAML config (default: configs/default.yaml, the shapes demonstration)")
    parser.add_argument("--resume", help="'latest' (the run's newest intact checkpoint, if any) or a checkpoint directory")
    parser.add_argument("--overwrite", action="store_true", help="start over in an output_dir that holds a run (its checkpoints and logs are removed)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. optim.lr=5e-4")
    return parser.parse_intermixed_args(argv)  # overrides may come before or after the flags


@cli_errors
def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from clipscratch.train.config import dump, resolve

    cfg = resolve(args.config, args.overrides)
    if args.print_config:
        print(dump(cfg), end="")
        return None
    from clipscratch.train.run import report, run

    results = run(cfg, resume=args.resume, overwrite=args.overwrite)
    if results:
        print("\n" + "\n".join(report(results)))
    return results


if __name__ == "__main__":
    main()
