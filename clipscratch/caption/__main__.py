"""``python -m clipscratch.caption train --config configs/caption_shapes.yaml [key.sub=value ...]``

Trains the language model and one caption decoder per method into output_dir; score them with
``python evaluate.py caption --model CLIP --decoder DIR [DIR ...] --dataset SPEC``.
"""
import argparse
import os
import sys

from ..errors import ClipscratchError, cli_errors


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m clipscratch.caption", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["train"], help="train: the language model and the caption decoders")
    p.add_argument("--config", help="YAML config (configs/caption_*.yaml)")
    p.add_argument("--overwrite", action="store_true", help="replace decoders an earlier run left in output_dir")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. captioner.steps=200")
    return p


@cli_errors
def main(argv=None):
    args = _parser().parse_intermixed_args(sys.argv[1:] if argv is None else argv)
    import dataclasses

    import yaml

    from .train import resolve, run

    cfg = resolve(args.config, args.overrides)
    if args.print_config:
        print(yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False), end="")
        return None
    existing = [m for m in ["lm", *cfg.captioner.methods] if os.path.exists(os.path.join(cfg.output_dir, m, "decoder.json"))]
    if existing and not args.overwrite:
        raise ClipscratchError(f"{cfg.output_dir} already holds decoders ({', '.join(existing)}); choose another "
                               f"output_dir=... or pass --overwrite to replace them")
    return run(cfg)


if __name__ == "__main__":
    main()
