"""Write image-caption webdataset shards (the img2dataset layout: key.jpg, key.txt, key.json).

    python -m clipscratch.data.make_shards --images DIR --captions captions.csv --out shards/
    python -m clipscratch.data.make_shards --imagefolder DIR --templates "a photo of a {}." --out shards/
    python -m clipscratch.data.make_shards --synthetic 10000 --out shards/   # coloured-shapes set

CSV/TSV files need ``image`` and ``caption`` columns (``file``/``filepath`` and
``text``/``title`` also work); JSONL lines the same keys. Unreadable images are
skipped, counted and reported.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
import random
from typing import Iterable, Iterator, List, Optional, Tuple

import webdataset as wds
from PIL import Image
from tqdm import tqdm

from ..errors import ClipscratchError, cli_errors

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")
_IMAGE_KEYS, _CAPTION_KEYS = ("image", "file", "filepath", "filename", "path"), ("caption", "text", "title")

Record = Tuple[Image.Image, str, dict]


def _encode_jpeg(image: Image.Image, quality: int = 92) -> bytes:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def write_shards(records: Iterable[Record], out_dir: str, maxcount: int = 1000, total: Optional[int] = None,
                 prefix: str = "shard", desc: str = "writing shards") -> dict:
    """Write ``(image, caption, meta)`` records to ``out_dir/prefix-000000.tar`` ...; returns a summary."""
    os.makedirs(out_dir, exist_ok=True)
    pattern = os.path.join(out_dir, f"{prefix}-%06d.tar")
    written = 0
    with wds.ShardWriter(pattern, maxcount=maxcount, verbose=0) as sink:
        for record in tqdm(records, total=total, desc=desc, unit="img"):
            image, caption, meta = record
            sink.write({"__key__": f"{written:09d}", "jpg": _encode_jpeg(image), "txt": caption, "json": json.dumps(meta)})
            written += 1
        shards = sink.shard
    summary = {"samples": written, "shards": shards, "pattern": os.path.join(out_dir, f"{prefix}-{{000000..{max(shards - 1, 0):06d}}}.tar")}
    with open(os.path.join(out_dir, f"{prefix}_info.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return summary


def read_caption_table(path: str) -> List[Tuple[str, str]]:
    """(image path, caption) rows of a CSV, TSV or JSONL file."""
    if not os.path.exists(path):
        raise ClipscratchError(f"{path}: captions file not found")
    if path.endswith((".jsonl", ".json")):
        with open(path) as f:
            rows = [json.loads(line) for line in f if line.strip()]
    else:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t" if path.endswith(".tsv") else ","))
    if not rows:
        return []
    image_key = next((k for k in _IMAGE_KEYS if k in rows[0]), None)
    caption_key = next((k for k in _CAPTION_KEYS if k in rows[0]), None)
    if image_key is None or caption_key is None:
        raise ClipscratchError(f"{path}: need an image column ({'/'.join(_IMAGE_KEYS)}) and a caption column "
                               f"({'/'.join(_CAPTION_KEYS)}); found {sorted(rows[0])}")
    return [(str(r[image_key]), str(r[caption_key])) for r in rows]


class SkipCounter:
    def __init__(self):
        self.skipped: List[str] = []

    def open(self, path: str) -> Optional[Image.Image]:
        try:
            with Image.open(path) as im:
                return im.convert("RGB")
        except (OSError, ValueError, Image.DecompressionBombError):
            self.skipped.append(path)
            return None


def caption_records(images_dir: str, table: List[Tuple[str, str]], skips: SkipCounter) -> Iterator[Record]:
    for rel, caption in table:
        image = skips.open(os.path.join(images_dir, rel))
        if image is not None:
            yield image, caption, {"source": rel}


def imagefolder_records(root: str, templates: List[str], seed: int, skips: SkipCounter) -> Iterator[Record]:
    if not os.path.isdir(root):
        raise ClipscratchError(f"{root}: not a directory")
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    rng = random.Random(seed)
    for label, name in enumerate(classes):
        for fname in sorted(os.listdir(os.path.join(root, name))):
            if fname.lower().endswith(IMAGE_EXTENSIONS):
                image = skips.open(os.path.join(root, name, fname))
                if image is not None:
                    yield image, rng.choice(templates).format(name.replace("_", " ")), {"label": label, "class": name}


def synthetic_records(n: int, seed: int, held_out: bool, image_size: int) -> Iterator[Record]:
    from .synthetic import generate

    for s in generate(n, seed, held_out, image_size):
        yield s.image, s.caption, s.meta()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--captions", help="CSV/TSV/JSONL of image paths and captions (paths relative to --images)")
    src.add_argument("--imagefolder", help="a folder with one sub-folder of images per class")
    src.add_argument("--synthetic", type=int, metavar="N", help="write N images of the coloured-shapes set")
    p.add_argument("--images", default=".", help="folder the --captions image paths are relative to")
    p.add_argument("--templates", nargs="+", default=["a photo of a {}."], help="caption templates for --imagefolder")
    p.add_argument("--held-out", action="store_true", help="--synthetic: only the held-out colour-shape pairs")
    p.add_argument("--image-size", type=int, default=64, help="--synthetic: image side in pixels")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--maxcount", type=int, default=1000, help="samples per shard")
    p.add_argument("--prefix", default="shard")
    p.add_argument("--seed", type=int, default=0)
    return p


@cli_errors
def main(argv=None) -> None:
    args = _parser().parse_args(argv)
    skips = SkipCounter()
    if args.captions:
        table = read_caption_table(args.captions)
        records, total = caption_records(args.images, table, skips), len(table)
    elif args.imagefolder:
        records, total = imagefolder_records(args.imagefolder, args.templates, args.seed, skips), None
    else:
        records, total = synthetic_records(args.synthetic, args.seed, args.held_out, args.image_size), args.synthetic
    summary = write_shards(records, args.out, args.maxcount, total, args.prefix)
    print(f"wrote {summary['samples']} samples in {summary['shards']} shards: {summary['pattern']}")
    if skips.skipped:
        print(f"skipped {len(skips.skipped)} unreadable images, e.g. {skips.skipped[0]}")


if __name__ == "__main__":
    main()
