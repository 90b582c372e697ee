"""Zero-shot evaluation speed from JPEG files on the GPU (images/s, end to end).

    python bench/eval_speed.py --images 10000 --workers 14

Writes an ImageFolder of 256x256 JPEGs (4 classes), then runs clipscratch's feature
extraction (decode + OpenAI preprocessing in DataLoader workers, ViT-B/32 on the GPU)
and the zero-shot classifier, in fp32 and fp16.
"""
import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def make_folder(root, n):
    from clipscratch.data.synthetic import SHAPES, generate

    if os.path.exists(os.path.join(root, "done")):
        return
    for s in SHAPES:
        os.makedirs(os.path.join(root, s), exist_ok=True)
    for i, sample in enumerate(generate(n, 7, False, 256)):
        sample.image.save(os.path.join(root, sample.shape, f"{i:06d}.jpg"), quality=90)
    open(os.path.join(root, "done"), "w").close()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default="/tmp/eval_folder")
    p.add_argument("--images", type=int, default=10000)
    p.add_argument("--workers", type=int, default=14)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--json", default=os.path.join(os.environ.get("OUT", "."), "eval_speed.json"))
    args = p.parse_args()
    make_folder(args.root, args.images)
    import clipscratch
    from clipscratch.eval.datasets import imagefolder
    from clipscratch.eval.features import FeatureExtractor
    from clipscratch.eval.zeroshot import zeroshot_metrics

    data = imagefolder(args.root)
    rows = []
    for dtype in (torch.float32, torch.float16):
        model = clipscratch.create_model("ViT-B/32").to("cuda", dtype).eval()
        ex = FeatureExtractor(model, clipscratch.image_transform(224), "cuda", args.batch, args.workers, progress=False)
        ex.image_features(data.subset(range(2 * args.batch), "warmup"))
        torch.cuda.synchronize()
        t = time.perf_counter()
        feats = ex.image_features(data)
        metrics = zeroshot_metrics(feats, data.labels, ex.classifier(data.classnames, ["a photo of a {}."]))
        torch.cuda.synchronize()
        dt = time.perf_counter() - t
        rows.append({"dtype": str(dtype), "images": len(data), "seconds": dt, "images_per_s": len(data) / dt,
                     "workers": args.workers, "batch": args.batch, "top1_random_weights": metrics["top1"]})
        print(json.dumps(rows[-1]), flush=True)
    with open(args.json, "w") as f:
        json.dump({"device": torch.cuda.get_device_name(), "cpus": os.cpu_count(), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
