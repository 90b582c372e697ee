"""Reading image-caption shards: a webdataset pipeline of small named stages.

    shards (mixed by weight, split by node and worker)
      -> tar samples (unreadable shards counted and skipped)
      -> shuffle buffer (seeded by seed, epoch, rank, worker)
      -> skip (resume: samples this worker already delivered this epoch)
      -> decode (corrupt images / missing captions counted and skipped; one of the
         sample's captions drawn per epoch)
      -> augment (randomness seeded per sample, so a resumed run sees the same crops)
         [gpu_decode: both replaced by keeping JPEG bytes; gpu_decode.py decodes on the GPU]
      -> batch + tokenize (in the worker)

Each batch carries the counts of what its worker skipped since the previous
batch, so the training loop can summarise bad input without crashing.
"""
from __future__ import annotations

import io
import json
import math
import os
import random
import zlib
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional, Sequence

import torch
import webdataset as wds
from braceexpand import braceexpand
from PIL import Image
from torchvision import transforms as T

from ..errors import ClipscratchError
from .images import UnreadableImage, encode_jpeg, needs_rotation, open_image

Sample = Dict[str, object]


@dataclass
class StreamSpec:
    """Where this copy of the pipeline sits: data sources, process rank and epoch."""

    sources: List[List[str]]  # shard urls of each source
    weights: List[float]
    batch_size: int
    seed: int = 0
    epoch: int = 0
    rank: int = 0
    world_size: int = 1
    resampled: bool = False
    batches_per_worker: Optional[int] = None  # resampled: batches each worker yields per epoch
    shuffle_buffer: int = 1000
    skip_batches: int = 0  # resume: batches this rank's loader already delivered this epoch
    num_workers: int = 1
    gpu_decode: bool = False  # keep JPEG bytes; decode + augment on the GPU (gpu_decode.py)


def expand_sources(spec: str | Sequence[str]) -> List[List[str]]:
    """``"a/{000..009}.tar::b/{00..03}.tar"`` or a list -> shard urls of each source (local paths checked)."""
    parts = spec.split("::") if isinstance(spec, str) else list(spec)
    sources = []
    for part in parts:
        urls = list(braceexpand(part))
        missing = [u for u in urls if "://" not in u and not os.path.exists(u)]
        if missing and len(missing) == len(urls):
            raise ClipscratchError(f"no shard found for {part!r} (e.g. {missing[0]})")
        sources.append([u for u in urls if u not in missing])
    return sources


def _worker() -> tuple:
    info = torch.utils.data.get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


def _rng(spec: StreamSpec, *salt) -> random.Random:
    worker, _ = _worker()
    key = "/".join(str(x) for x in (spec.seed, spec.epoch, spec.rank, worker) + salt)
    return random.Random(zlib.crc32(key.encode()))


def shard_urls(spec: StreamSpec) -> Iterator[Dict[str, str]]:
    """Stage 1: this worker's shard urls; one pass (split by node and worker) or resampled by weight forever."""
    worker, num_workers = _worker()
    rng = _rng(spec, "shards")
    if spec.resampled:
        while True:
            source = rng.choices(range(len(spec.sources)), weights=spec.weights)[0]
            yield {"url": rng.choice(spec.sources[source])}
    urls = [u for src in spec.sources for u in src]
    random.Random(spec.seed + spec.epoch).shuffle(urls)  # same order on every rank and worker
    mine = urls[spec.rank :: spec.world_size][worker :: num_workers]
    for url in mine:
        yield {"url": url}


class SkipLog:
    """Counts what a worker skipped; drained into each batch it yields."""

    def __init__(self):
        self.counts: Dict[str, int] = {}

    def add(self, kind: str) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1

    def drain(self) -> Dict[str, int]:
        counts, self.counts = self.counts, {}
        return counts


def shuffle(buffer: int, rng: random.Random) -> Callable[[Iterator[Sample]], Iterator[Sample]]:
    def stage(samples):
        pool: List[Sample] = []
        for s in samples:
            pool.append(s)
            if len(pool) >= buffer:
                yield pool.pop(rng.randrange(len(pool)))
        rng.shuffle(pool)
        yield from pool

    return stage if buffer > 1 else (lambda samples: samples)


def skip(n: int) -> Callable[[Iterator[Sample]], Iterator[Sample]]:
    def stage(samples):
        for i, s in enumerate(samples):
            if i >= n:
                yield s

    return stage


def _captions(sample: Sample) -> List[str]:
    """All captions of a sample: make_shards' json list, else the txt member."""
    if "json" in sample:
        try:
            listed = json.loads(sample["json"]).get("captions")
        except (ValueError, AttributeError):
            listed = None
        if isinstance(listed, list):
            return [c.strip() for c in listed if isinstance(c, str) and c.strip()]
    text = sample.get("txt")
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    return [text.strip()] if text and text.strip() else []


def _caption(sample: Sample, log: SkipLog, seed: int, epoch: int) -> Optional[str]:
    """One of the sample's captions, drawn afresh each epoch (seeded by seed, epoch and key, so
    a resumed run draws the same); None (counted) when it has none."""
    captions = _captions(sample)
    if not captions:
        log.add("missing caption")
        return None
    if len(captions) == 1:
        return captions[0]
    return random.Random(zlib.crc32(f"{seed}/{epoch}/{sample.get('__key__', '?')}/caption".encode())).choice(captions)


def decode(log: SkipLog, seed: int, epoch: int) -> Callable[[Iterator[Sample]], Iterator[Sample]]:
    """Raw tar members -> {"key", "image": PIL RGB, "caption": str}; corrupt ones counted and dropped."""

    def stage(samples):
        for s in samples:
            raw = next((s[k] for k in ("jpg", "jpeg", "png", "webp") if k in s), None)
            if raw is None:
                log.add("missing image")
                continue
            caption = _caption(s, log, seed, epoch)
            if caption is None:
                continue
            try:
                image = open_image(raw)
            except UnreadableImage:
                log.add("corrupt image")
                continue
            yield {"key": s.get("__key__", "?"), "image": image, "caption": caption}

    return stage


def raw_jpegs(log: SkipLog, crop: Optional[T.RandomResizedCrop], seed: int, epoch: int
              ) -> Callable[[Iterator[Sample]], Iterator[Sample]]:
    """gpu_decode mode: keep the JPEG bytes as a uint8 tensor (the GPU decodes the batch) and
    draw the crop box here from the header's size, seeded as ``augment`` seeds the CPU path."""

    def stage(samples):
        for s in samples:
            raw = s.get("jpg", s.get("jpeg"))
            if raw is None or raw[:2] != b"\xff\xd8":
                log.add("not a JPEG")
                continue
            caption = _caption(s, log, seed, epoch)
            if caption is None:
                continue
            if needs_rotation(raw):  # nvJPEG ignores EXIF orientation: turn it upright here (make_shards already does)
                try:
                    raw = encode_jpeg(open_image(raw))
                except UnreadableImage:
                    log.add("corrupt image")
                    continue
            box = None  # no RandomResizedCrop in the transform: gpu_transform takes the centred square
            if crop is not None:
                try:
                    with Image.open(io.BytesIO(raw)) as im:  # reads the header only
                        _seed_sample(seed, epoch, s)
                        box = crop.get_params(im, crop.scale, crop.ratio)
                except (OSError, ValueError, Image.DecompressionBombError):
                    log.add("corrupt image")
                    continue
            yield {"key": s.get("__key__", "?"), "image": torch.frombuffer(bytearray(raw), dtype=torch.uint8),
                   "caption": caption, "box": box}

    return stage


def _seed_sample(seed: int, epoch: int, sample: Sample) -> None:
    # the CPU generator only: torch.manual_seed would also queue a lazy CUDA seeding call,
    # with a formatted stack trace, for every sample (0.4 ms each, and a list that grows)
    torch.default_generator.manual_seed(zlib.crc32(f"{seed}/{epoch}/{sample.get('key', sample.get('__key__', '?'))}".encode()))


def augment(transform: Callable, seed: int, epoch: int) -> Callable[[Iterator[Sample]], Iterator[Sample]]:
    """Apply the image transform with torch randomness seeded by (seed, epoch, sample key)."""

    def stage(samples):
        for s in samples:
            _seed_sample(seed, epoch, s)
            s["image"] = transform(s["image"])
            yield s

    return stage


def _stack_shared(images: List[torch.Tensor]) -> torch.Tensor:
    """torch.stack into shared memory: a DataLoader worker then sends the batch without
    copying it once more into a shared segment."""
    return torch.stack(images, out=_shared_empty((len(images), *images[0].shape), images[0].dtype))


def _cat_shared(parts: List[torch.Tensor]) -> torch.Tensor:
    """torch.cat into one shared segment (a list of tensors would cost a segment and a file
    descriptor each on the way to the main process)."""
    return torch.cat(parts, out=_shared_empty((sum(len(p) for p in parts),), parts[0].dtype))


def _shared_empty(shape, dtype) -> torch.Tensor:
    out = torch.empty(shape, dtype=dtype)
    return out.share_memory_() if torch.utils.data.get_worker_info() is not None else out


def batch_and_tokenize(batch_size: int, context_length: int, trim_text: bool, log: SkipLog, limit: Optional[int]):
    def stage(samples):
        from ..tokenizer import get_tokenizer

        tokenizer = get_tokenizer(context_length)
        produced, pending = 0, []
        for s in samples:
            pending.append(s)
            if len(pending) == batch_size:
                tokens = tokenizer([p["caption"] for p in pending])
                if trim_text:
                    tokens = tokens[:, : int((tokens != 0).sum(1).max())]
                images = [p["image"] for p in pending]
                batch = {"tokens": tokens, "captions": [p["caption"] for p in pending], "keys": [p["key"] for p in pending],
                         "skipped": log.drain()}
                if images[0].dim() == 1:  # gpu_decode: JPEG bytes packed in one tensor, a crop box per image
                    batch["images"] = _cat_shared(images)
                    batch["jpeg_ends"] = torch.tensor([len(i) for i in images], dtype=torch.int64).cumsum(0)
                    if pending[0]["box"] is not None:
                        batch["boxes"] = torch.tensor([p["box"] for p in pending], dtype=torch.int64)
                else:
                    batch["images"] = _stack_shared(images)
                yield batch
                pending, produced = [], produced + 1
                if limit is not None and produced >= limit:
                    return

    return stage


def count_unreadable_shards(log: SkipLog) -> Callable[[Exception], bool]:
    """webdataset error handler: count the bad shard (or tar member) and keep going."""

    def handler(exn: Exception) -> bool:
        log.add("unreadable shard")
        return True

    return handler


def _random_crop(transform: Callable) -> Optional[T.RandomResizedCrop]:
    """The RandomResizedCrop of a torchvision Compose, if it has one."""
    return next((t for t in getattr(transform, "transforms", []) if isinstance(t, T.RandomResizedCrop)), None)


class ShardDataset(torch.utils.data.IterableDataset):
    """The whole pipeline for one rank; iterate it through a DataLoader with batch_size=None."""

    def __init__(self, spec: StreamSpec, transform: Callable, context_length: int, trim_text: bool = True):
        super().__init__()
        self.spec, self.transform, self.context_length, self.trim_text = spec, transform, context_length, trim_text

    def __iter__(self):
        spec = self.spec
        worker, num_workers = _worker()
        log = SkipLog()
        skip_batches = 0
        if spec.skip_batches > worker:
            skip_batches = (spec.skip_batches - worker + num_workers - 1) // num_workers
        limit = spec.batches_per_worker
        if limit is not None:
            limit = max(0, limit - skip_batches)
        stages = [
            lambda _: shard_urls(spec),
            wds.tarfile_to_samples(handler=count_unreadable_shards(log)),
            shuffle(spec.shuffle_buffer, _rng(spec, "shuffle")),
            skip(skip_batches * spec.batch_size),
            raw_jpegs(log, _random_crop(self.transform), spec.seed, spec.epoch) if spec.gpu_decode else decode(log, spec.seed, spec.epoch),
            (lambda samples: samples) if spec.gpu_decode else augment(self.transform, spec.seed, spec.epoch),
            batch_and_tokenize(spec.batch_size, self.context_length, self.trim_text, log, limit),
        ]
        stream = None
        for stage in stages:
            stream = stage(stream)
        yield from stream


def make_loader(dataset: ShardDataset, num_workers: int, pin_memory: bool = False) -> torch.utils.data.DataLoader:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return torch.utils.data.DataLoader(
        dataset, batch_size=None, num_workers=num_workers, pin_memory=pin_memory,
        persistent_workers=False, prefetch_factor=4 if num_workers > 0 else None,
        generator=torch.Generator().manual_seed(0),  # worker seeds must not draw on the global RNG
    )


def batches_per_worker(samples_per_epoch: int, batch_size: int, world_size: int, num_workers: int) -> int:
    return max(1, math.ceil(samples_per_epoch / (batch_size * world_size * max(1, num_workers))))
