"""Write image-caption webdataset shards, one sample per image with all its captions.

    python -m clipscratch.data.make_shards --captions captions.csv --images photos/ --out shards/
    python -m clipscratch.data.make_shards --captions Flickr8k.token.txt --images Flicker8k_Dataset/ \\
        --only Flickr_8k.trainImages.txt --split train --out shards/flickr8k-train/
    python -m clipscratch.data.make_shards --imagefolder DIR --templates "a photo of a {}." --out shards/
    python -m clipscratch.data.make_shards --synthetic 10000 --out shards/   # coloured-shapes set

Each sample is ``key.jpg`` (the original JPEG bytes where they can be kept, else a quality-95
re-encoding; EXIF orientation applied), ``key.txt`` (the first caption) and ``key.json``
(``{"captions": [...], "source": ..., "split"?: ..., "label"?: ...}``); training draws one
caption per visit. Caption files: Flickr's ``image.jpg#N<TAB>caption``, CSV/TSV with image and
caption columns, or JSONL (``data/captions.py``). Unreadable images are skipped, counted and
named. Shards are written under a temporary name and renamed when complete; an output folder
that already holds shards of the same prefix is refused unless ``--overwrite``.
``PREFIX_info.json`` records the samples of each shard: training plans its epochs from it and
counts the samples a damaged shard loses.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
from dataclasses import dataclass, field
from typing import Dict, Iterable, Iterator, List, Optional

import webdataset as wds
from tqdm import tqdm

from ..errors import ClipscratchError, cli_errors
from .captions import read_image_list, read_table
from .images import IMAGE_EXTENSIONS, UnreadableImage, encode_jpeg, is_jpeg, needs_rotation, open_image


@dataclass
class Sample:
    jpeg: bytes
    captions: List[str]
    meta: dict = field(default_factory=dict)


def jpeg_bytes(path: str) -> bytes:
    """The file's own bytes when it is an upright, decodable JPEG; else a re-encoding of what
    ``open_image`` makes of it (RGB, 8 bits, upright). Raises UnreadableImage."""
    with open(path, "rb") as f:
        data = f.read()
    image = open_image(data, name=path)  # decodes fully: a truncated file fails here, not in training
    return data if is_jpeg(data) and not needs_rotation(data) else encode_jpeg(image)


class Skipped:
    """Images that were listed but not found, or found but not readable; named in the summary."""

    def __init__(self):
        self.missing: List[str] = []
        self.unreadable: List[str] = []

    def read(self, path: str) -> Optional[bytes]:
        try:
            return jpeg_bytes(path)
        except FileNotFoundError:
            self.missing.append(path)
        except UnreadableImage:
            self.unreadable.append(path)
        return None

    def report(self) -> None:
        if self.missing:
            print(f"skipped {len(self.missing)} listed images that are not there, e.g. {self.missing[0]}")
        if self.unreadable:
            print(f"skipped {len(self.unreadable)} unreadable images: {', '.join(self.unreadable[:3])}"
                  + (" ..." if len(self.unreadable) > 3 else ""))


class ShardWriter:
    """Tar shards of ``maxcount`` samples: ``out/prefix-000000.tar`` ..., each written as a
    hidden ``.partial`` file and renamed when complete, so a crash leaves no half shard under a
    shard's name."""

    def __init__(self, out_dir: str, prefix: str, maxcount: int):
        self.out_dir, self.prefix, self.maxcount = out_dir, prefix, maxcount
        self.shards = self.samples = self._in_shard = 0
        self.counts: Dict[str, int] = {}  # shard file name -> samples
        self._writer: Optional[wds.TarWriter] = None

    def _path(self, n: int, partial: bool = False) -> str:
        name = f"{self.prefix}-{n:06d}.tar"
        return os.path.join(self.out_dir, f".{name}.partial" if partial else name)

    def write(self, sample: dict) -> None:
        if self._writer is None:
            self._writer = wds.TarWriter(self._path(self.shards, partial=True))
        self._writer.write(sample)
        self.samples += 1
        self._in_shard += 1
        if self._in_shard == self.maxcount:
            self._finish()

    def _finish(self) -> None:
        self._writer.close()
        os.replace(self._path(self.shards, partial=True), self._path(self.shards))
        self.counts[os.path.basename(self._path(self.shards))] = self._in_shard
        self._writer, self._in_shard, self.shards = None, 0, self.shards + 1

    def close(self) -> None:
        if self._writer is not None:
            self._finish()


def existing_shards(out_dir: str, prefix: str) -> List[str]:
    return sorted(glob.glob(os.path.join(glob.escape(out_dir), f"{glob.escape(prefix)}-*.tar")))


def write_shards(samples: Iterable[Sample], out_dir: str, maxcount: int = 1000, total: Optional[int] = None,
                 prefix: str = "shard", desc: str = "writing shards", overwrite: bool = False, info: Optional[dict] = None) -> dict:
    """Write samples to ``out_dir/prefix-000000.tar`` ... and ``prefix_info.json`` (the summary,
    with ``info`` added); returns the summary."""
    info_path = os.path.join(out_dir, f"{prefix}_info.json")
    old = existing_shards(out_dir, prefix) + ([info_path] if os.path.exists(info_path) else [])
    if old and not overwrite:
        raise ClipscratchError(f"{out_dir} already holds shards named {prefix}-*.tar ({len(old)} files); choose another "
                               f"--out or --prefix, or pass --overwrite to replace them")
    os.makedirs(out_dir, exist_ok=True)
    for path in old + glob.glob(os.path.join(glob.escape(out_dir), f".{glob.escape(prefix)}-*.tar.partial")):
        os.remove(path)  # --overwrite: the shards of this prefix (and partial files a crash left)
    writer = ShardWriter(out_dir, prefix, maxcount)
    for sample in tqdm(samples, total=total, desc=desc, unit="img"):
        key = f"{writer.samples:09d}"
        writer.write({"__key__": key, "jpg": sample.jpeg, "txt": sample.captions[0],
                      "json": json.dumps({"captions": sample.captions, **sample.meta})})
    writer.close()
    if writer.samples == 0:
        raise ClipscratchError("no image was written: check --images, --only and the caption file")
    summary = {"samples": writer.samples, "shards": writer.shards,
               "pattern": os.path.join(out_dir, f"{prefix}-{{000000..{max(writer.shards - 1, 0):06d}}}.tar"),
               "shard_samples": writer.counts, **(info or {})}
    tmp = info_path + ".partial"
    with open(tmp, "w") as f:
        json.dump(summary, f, indent=2)
    os.replace(tmp, info_path)
    return summary


def with_split(samples: Iterable[Sample], split: str) -> Iterator[Sample]:
    for sample in samples:
        sample.meta["split"] = split
        yield sample


def caption_samples(table_path: str, images_dir: str, only: Optional[set], skipped: Skipped) -> Iterator[Sample]:
    for record in read_table(table_path):
        if only is not None and os.path.basename(record.image) not in only and record.image not in only:
            continue
        if not record.captions:
            continue
        data = skipped.read(os.path.join(images_dir, record.image))
        if data is not None:
            meta = {"source": record.image}
            meta.update({k: v for k, v in (("split", record.split), ("label", record.label)) if v is not None})
            yield Sample(data, record.captions, meta)


def imagefolder_samples(root: str, templates: List[str], skipped: Skipped) -> Iterator[Sample]:
    if not os.path.isdir(root):
        raise ClipscratchError(f"{root}: not a directory")
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    for label, name in enumerate(classes):
        for fname in sorted(os.listdir(os.path.join(root, name))):
            if fname.lower().endswith(IMAGE_EXTENSIONS):
                data = skipped.read(os.path.join(root, name, fname))
                if data is not None:
                    captions = [t.format(name.replace("_", " ")) for t in templates]
                    yield Sample(data, captions, {"label": label, "class": name, "source": os.path.join(name, fname)})


def synthetic_samples(n: int, seed: int, held_out: bool, image_size: int) -> Iterator[Sample]:
    from .synthetic import generate

    for s in generate(n, seed, held_out, image_size):
        yield Sample(encode_jpeg(s.image, quality=92), [s.caption], s.meta())


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--captions", help="caption file: Flickr token (image.jpg#N<TAB>caption), CSV/TSV or JSONL")
    src.add_argument("--imagefolder", help="a folder with one sub-folder of images per class")
    src.add_argument("--synthetic", type=int, metavar="N", help="write N images of the coloured-shapes set")
    p.add_argument("--images", default=None, help="folder the caption file's image paths are relative to "
                   "(default: the caption file's folder, or its images/ sub-folder)")
    p.add_argument("--only", metavar="LIST", help="keep only the images named in this file, one per line "
                   "(e.g. Flickr_8k.trainImages.txt)")
    p.add_argument("--split", choices=["train", "val", "test"], help="record this split in every sample "
                   "(evaluate.py then takes the shards as that part of a source, e.g. scores 'test' shards whole)")
    p.add_argument("--templates", nargs="+", default=["a photo of a {}."], help="caption templates for --imagefolder "
                   "(every template is one caption of the image)")
    p.add_argument("--held-out", action="store_true", help="--synthetic: only the held-out colour-shape pairs")
    p.add_argument("--image-size", type=int, default=64, help="--synthetic: image side in pixels")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--maxcount", type=int, default=1000, help="samples per shard")
    p.add_argument("--prefix", default="shard")
    p.add_argument("--seed", type=int, default=0, help="--synthetic: generator seed")
    p.add_argument("--overwrite", action="store_true", help="replace shards of the same prefix already in --out")
    return p


def _images_dir(args) -> str:
    if args.images:
        return args.images
    base = os.path.dirname(os.path.abspath(args.captions))
    for sub in ("images", "Images"):
        if os.path.isdir(os.path.join(base, sub)):
            return os.path.join(base, sub)
    return base


@cli_errors
def main(argv=None) -> None:
    args = _parser().parse_args(argv)
    if args.maxcount < 1:
        raise ClipscratchError("--maxcount must be at least 1")
    skipped = Skipped()
    total = None
    if args.captions:
        only = read_image_list(args.only) if args.only else None
        samples = caption_samples(args.captions, _images_dir(args), only, skipped)
    elif args.imagefolder:
        samples = imagefolder_samples(args.imagefolder, args.templates, skipped)
    else:
        samples, total = synthetic_samples(args.synthetic, args.seed, args.held_out, args.image_size), args.synthetic
    if args.split:
        samples = with_split(samples, args.split)
    try:
        summary = write_shards(samples, args.out, args.maxcount, total, args.prefix, overwrite=args.overwrite)
    finally:
        skipped.report()
    print(f"wrote {summary['samples']} images in {summary['shards']} shards: {summary['pattern']}")


if __name__ == "__main__":
    main()
