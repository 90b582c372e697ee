"""JPEG decoding on the CPU path: full decode vs PIL draft mode (DCT-domain downscaling).

    python bench/draft_decode.py --photos ../shared/data/flickr8k-1000/images   # the shared Flickr8k photos (200 px)
    python bench/draft_decode.py --photos ../shared/data/photos --upscale 3000   # large photos (draft mode engages)

Decodes each JPEG as the training pipeline does for a 224-pixel random crop (scale 0.9-1.0), once
fully and once with `min_side=draft_side(...)`, and reports images/s per core for both.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from PIL import Image  # noqa: E402

from clipscratch.data.images import encode_jpeg, open_image  # noqa: E402
from clipscratch.data.pipeline import draft_side  # noqa: E402
from clipscratch.transforms import image_transform  # noqa: E402


def load(folder: str, upscale: int, limit: int):
    kinds = (".jpg", ".jpeg", ".png") if upscale else (".jpg", ".jpeg")  # upscaled photos are re-encoded as JPEG
    names = sorted(n for n in os.listdir(folder) if n.lower().endswith(kinds))[:limit]
    blobs = []
    for name in names:
        data = open(os.path.join(folder, name), "rb").read()
        if upscale:
            img = open_image(data)
            w, h = img.size
            f = upscale / max(w, h)
            data = encode_jpeg(img.resize((round(w * f), round(h * f)), Image.BICUBIC))
        blobs.append(data)
    return blobs


def rate(blobs, min_side):
    t0 = time.perf_counter()
    pixels = 0
    for data in blobs:
        img = open_image(data, min_side=min_side)
        pixels += img.size[0] * img.size[1]
    return len(blobs) / (time.perf_counter() - t0), pixels / len(blobs)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--photos", required=True, help="folder of JPEGs")
    p.add_argument("--upscale", type=int, default=0, help="re-encode each photo with this longest side first")
    p.add_argument("--limit", type=int, default=200)
    p.add_argument("--size", type=int, default=224)
    args = p.parse_args()
    blobs = load(args.photos, args.upscale, args.limit)
    side = draft_side(image_transform(args.size, train=True, scale=(0.9, 1.0)))
    rate(blobs[:5], None)  # warm-up
    full, full_px = rate(blobs, None)
    draft, draft_px = rate(blobs, side)
    mb = sum(map(len, blobs)) / len(blobs) / 1e6
    print(f"{len(blobs)} JPEGs, {mb:.2f} MB each, crop {args.size} (draft side {side})")
    print("| decode | images/s (1 core) | decoded megapixels |\n|---|---:|---:|")
    print(f"| full | {full:.1f} | {full_px / 1e6:.2f} |")
    print(f"| draft | {draft:.1f} | {draft_px / 1e6:.2f} |")
    print(f"draft / full: {draft / full:.2f}x")


if __name__ == "__main__":
    main()
