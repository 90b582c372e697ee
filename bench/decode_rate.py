"""JPEG decode to RGB pixels on one CPU core: through a PIL image and a copy of its pixels (the
path before data.images.open_pixels, still used for non-JPEG and rotated images) against
open_pixels (libjpeg-turbo through simplejpeg, straight into one array). The rounds alternate.

    python bench/decode_rate.py '/tmp/shards/part000-000000.tar' ../shared/data/flickr8k-1000/images
"""
import argparse
import glob
import os
import sys
import tarfile
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def jpegs_in(source: str, limit: int):
    if os.path.isdir(source):
        return [open(p, "rb").read() for p in sorted(glob.glob(os.path.join(source, "*.jpg")))[:limit]]
    with tarfile.open(source) as tar:
        members = [m for m in tar.getmembers() if m.name.endswith(".jpg")][:limit]
        return [tar.extractfile(m).read() for m in members]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sources", nargs="+", help="a tar shard or a folder of .jpg files")
    p.add_argument("--limit", type=int, default=500, help="JPEGs per source")
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    from clipscratch.data.images import open_image, open_pixels
    from clipscratch.transforms import pixels

    torch.set_num_threads(1)
    ways = {"PIL image + copy": lambda d: pixels(open_image(d)), "open_pixels": open_pixels}
    for source in args.sources:
        data = jpegs_in(source, args.limit)
        times = {name: [] for name in ways}
        for _ in range(args.rounds):
            for name, way in ways.items():
                t = time.perf_counter()
                for d in data:
                    way(d)
                times[name].append((time.perf_counter() - t) / len(data) * 1e6)
        line = ", ".join(f"{name} {min(ts):.0f} us (median {sorted(ts)[len(ts) // 2]:.0f})" for name, ts in times.items())
        print(f"{source}: {len(data)} JPEGs, a JPEG: {line}", flush=True)


if __name__ == "__main__":
    main()
