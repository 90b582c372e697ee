"""Evaluate a CLIP checkpoint: zero-shot, retrieval, linear probe, few-shot finetuning,
Tip-Adapter, Grad-CAM, CLIPScore and image+text binary tasks, on cached features.

    python evaluate.py zeroshot --model runs/default/checkpoints/step_00000552 --dataset shapes:colour
    python evaluate.py zeroshot --model ViT-B-32.pt --dataset cifar10 --root ~/data --download
    python evaluate.py tip-adapter --model ckpt/ --dataset digits --shots 1 2 4 8 16
    python evaluate.py METHOD --help
"""
import argparse
import sys

from clipscratch.errors import cli_errors


def build_parser() -> argparse.ArgumentParser:
    from clipscratch.eval.args import non_negative_int, positive_int
    from clipscratch.eval.suite import METHODS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="method", required=True, metavar="METHOD")
    for name, module in METHODS.items():
        p = sub.add_parser(name, help=(module.__doc__ or "").strip().splitlines()[0], description=module.__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("--model", required=True, help="checkpoint path (any format clipscratch.load reads) or OpenAI name")
        p.add_argument("--arch", help="architecture name for open_clip checkpoints (e.g. ViT-B-32)")
        p.add_argument("--dataset", default="digits", help="dataset spec (see clipscratch/eval/datasets.py): digits, shapes:colour, cifar10, imagefolder:DIR, csv:FILE, wds:PATTERN ...")
        p.add_argument("--root", default="data", help="root folder of torchvision datasets")
        p.add_argument("--download", action="store_true", help="let torchvision download the dataset (needs internet)")
        p.add_argument("--out", default="eval_results", help="folder for JSON, CSV and PNG outputs")
        p.add_argument("--device", default="cuda" if _cuda() else "cpu")
        p.add_argument("--batch-size", type=positive_int, default=128)
        p.add_argument("--workers", type=non_negative_int, default=0)
        p.add_argument("--cache-dir", default=".cache/features", help="feature cache folder ('' disables it)")
        module.add_arguments(p)
    return parser


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@cli_errors
def main(argv=None):
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    import clipscratch
    from clipscratch.eval.suite import METHODS, Suite

    model, preprocess = clipscratch.load(args.model, model=args.arch, device=args.device)
    suite = Suite(model, preprocess, args.dataset, args.out, args.device, args.root, args.download,
                  args.batch_size, args.workers, args.cache_dir or None)
    print(f"{args.method} on {args.dataset}")
    return METHODS[args.method].run(suite, args)


if __name__ == "__main__":
    main()
