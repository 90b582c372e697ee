"""Reading image-caption shards: a webdataset pipeline of small named stages.

    shards (mixed by weight, split by node and worker)
      -> tar samples (unreadable shards counted; samples a damaged shard lost are counted
         against make_shards' per-shard counts)
      -> shuffle buffer (seeded by seed, epoch, rank, worker)
      -> skip (resume: the raw samples this worker had consumed, counted before decoding, so a
         dropped corrupt sample cannot shift a resumed stream)
      -> decode (corrupt images / missing captions counted and skipped; one of the
         sample's captions drawn per epoch)
      -> augment (randomness seeded per sample, so a resumed run sees the same crops)
         [gpu_decode: both replaced by keeping JPEG bytes; gpu_decode.py decodes on the GPU]
      -> batch + tokenize (in the worker)

Each batch carries the counts of what its worker skipped since the previous batch (a worker's
last item may be such a tally alone, ``is_tally``), and the worker's position (raw samples
consumed, batches delivered), which the trainer saves for an exact resume. A resampled stream that reads shard after shard without a usable sample stops
with one clear error instead of running forever.
"""
from __future__ import annotations

import io
import json
import math
import os
import random
import zlib
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from braceexpand import braceexpand
from PIL import Image
from webdataset.tariterators import group_by_keys
from torchvision import transforms as T

from ..errors import ClipscratchError
from ..transforms import RandomResizedCropPixels
from .images import UnreadableImage, encode_jpeg, exif_rotated, open_image, open_pixels
from .tar_members import shard_files

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
    resume: Dict[int, Tuple[int, int]] = field(default_factory=dict)  # worker -> (raw samples consumed, batches delivered)
    first_worker: int = 0  # resume: the worker whose batch comes next (DataLoader's round robin starts there)
    shard_samples: Dict[str, int] = field(default_factory=dict)  # url -> samples make_shards wrote in it
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


def _worker(spec: StreamSpec) -> Tuple[int, int]:
    """(this loader worker's stream, number of workers). DataLoader hands out batches round robin
    from worker 0; a resumed loader plays stream ``first_worker`` in worker 0, so the batches
    come in the order the interrupted run would have seen them."""
    info = torch.utils.data.get_worker_info()
    if info is None:
        return 0, 1
    return (info.id + spec.first_worker) % info.num_workers, info.num_workers


def _rng(spec: StreamSpec, *salt) -> random.Random:
    worker, _ = _worker(spec)
    key = "/".join(str(x) for x in (spec.seed, spec.epoch, spec.rank, worker) + salt)
    return random.Random(zlib.crc32(key.encode()))


def epoch_shard_order(sources: List[List[str]], seed: int, epoch: int) -> List[str]:
    """Every shard url once, in this epoch's order (the same on every rank and worker)."""
    urls = [u for src in sources for u in src]
    random.Random(seed + epoch).shuffle(urls)
    return urls


def shard_urls(spec: StreamSpec) -> Iterator[Dict[str, str]]:
    """Stage 1: this worker's shard urls; one pass (split by node and worker) or resampled by weight forever."""
    worker, num_workers = _worker(spec)
    rng = _rng(spec, "shards")
    if spec.resampled:
        while True:
            source = rng.choices(range(len(spec.sources)), weights=spec.weights)[0]
            yield {"url": rng.choice(spec.sources[source])}
    mine = epoch_shard_order(spec.sources, spec.seed, spec.epoch)[spec.rank :: spec.world_size][worker :: num_workers]
    for url in mine:
        yield {"url": url}


def shard_counts(sources: List[List[str]]) -> Dict[str, int]:
    """url -> samples, from the ``*_info.json`` files make_shards writes beside its shards
    (urls whose count is unknown are absent)."""
    counts: Dict[str, int] = {}
    for folder in sorted({os.path.dirname(u) for src in sources for u in src if "://" not in u}):
        for name in sorted(os.listdir(folder or ".")):
            if name.endswith("_info.json"):
                try:
                    with open(os.path.join(folder, name)) as f:
                        listed = json.load(f).get("shard_samples", {})
                except (OSError, ValueError):
                    continue
                counts.update({os.path.join(folder, shard): int(n) for shard, n in listed.items()})
    wanted = {u for src in sources for u in src}
    return {u: n for u, n in counts.items() if u in wanted}


def planned_batches(sources: List[List[str]], counts: Dict[str, int], seed: int, epoch: int, world_size: int,
                    num_workers: int, batch_size: int) -> Optional[List[int]]:
    """Batches each rank's loader yields in one pass of this epoch (each worker drops its last
    partial batch), or None when a shard's count is unknown."""
    urls = epoch_shard_order(sources, seed, epoch)
    if any(u not in counts for u in urls):
        return None
    workers = max(1, num_workers)
    return [sum(sum(counts[u] for u in urls[rank::world_size][w::workers]) // batch_size for w in range(workers))
            for rank in range(world_size)]


class SkipLog:
    """Counts what a worker skipped; drained into each batch it yields."""

    def __init__(self):
        self.counts: Dict[str, int] = {}

    def add(self, kind: str, n: int = 1) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + n

    def drain(self) -> Dict[str, int]:
        counts, self.counts = self.counts, {}
        return counts


class WorkerProgress:
    """A worker's position in its epoch's stream (raw samples consumed, batches delivered) and
    its watch for a stream that yields nothing usable."""

    def __init__(self, consumed: int, batches: int, stall_shards: Optional[int], stall_samples: Optional[int]):
        self.consumed, self.batches = consumed, batches
        self.stall_shards, self.stall_samples = stall_shards, stall_samples  # None: the stream ends by itself
        self.empty_shards = self.unusable = 0

    def shard_read(self, samples: int) -> None:
        self.empty_shards = 0 if samples else self.empty_shards + 1
        if self.stall_shards is not None and self.empty_shards >= self.stall_shards:
            raise ClipscratchError(f"{self.empty_shards} shards in a row could not be read: no usable training data")

    def sample_decoded(self, usable: bool) -> None:
        self.unusable = 0 if usable else self.unusable + 1
        if self.stall_samples is not None and self.unusable >= self.stall_samples:
            raise ClipscratchError(f"{self.unusable} samples in a row had no readable image and caption: no usable training data")


def read_shards(log: SkipLog, progress: WorkerProgress, expected: Dict[str, int]
                ) -> Callable[[Iterator[Dict[str, str]]], Iterator[Sample]]:
    """Shard urls -> tar samples; a damaged shard's lost samples are counted (when make_shards'
    count for it is known), an unreadable shard once."""
    handler = count_unreadable_shards(log)

    def stage(urls):
        for item in urls:
            n = 0
            for sample in group_by_keys(shard_files(item["url"], handler), handler=handler):
                n += 1
                yield sample
            lost = expected.get(item["url"], 0) - n
            if lost > 0:
                log.add("sample lost in a damaged shard", lost)
            progress.shard_read(n)

    return stage


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


def skip(progress: WorkerProgress) -> Callable[[Iterator[Sample]], Iterator[Sample]]:
    """Drop the raw samples a resumed worker had consumed; count every sample let through."""

    def stage(samples):
        for i, s in enumerate(samples):
            if i >= progress.consumed:
                progress.consumed += 1
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


def decode(log: SkipLog, progress: WorkerProgress, seed: int, epoch: int, min_side: int = 0, as_pixels: bool = False
           ) -> Callable[[Iterator[Sample]], Iterator[Sample]]:
    """Raw tar members -> {"key", "image": PIL RGB (``as_pixels``: uint8 pixels [3, H, W],
    images.open_pixels), "caption": str}; corrupt ones counted and dropped; large JPEGs decoded
    at a reduced scale that keeps ``min_side`` (images.open_image)."""
    open_one = open_pixels if as_pixels else open_image

    def one(s: Sample) -> Optional[Sample]:
        raw = next((s[k] for k in ("jpg", "jpeg", "png", "webp") if k in s), None)
        if raw is None:
            log.add("missing image")
            return None
        caption = _caption(s, log, seed, epoch)
        if caption is None:
            return None
        try:
            return {"key": s.get("__key__", "?"), "image": open_one(raw, min_side=min_side), "caption": caption}
        except UnreadableImage:
            log.add("corrupt image")
            return None

    def stage(samples):
        for s in samples:
            decoded = one(s)
            progress.sample_decoded(decoded is not None)
            if decoded is not None:
                yield decoded

    return stage


def raw_jpegs(log: SkipLog, progress: WorkerProgress, crop: Optional[T.RandomResizedCrop], seed: int, epoch: int
              ) -> Callable[[Iterator[Sample]], Iterator[Sample]]:
    """gpu_decode mode: keep the JPEG bytes as a uint8 tensor (the GPU decodes the batch) and
    draw the crop box here from the header's size, seeded as ``augment`` seeds the CPU path."""

    def one(s: Sample) -> Optional[Sample]:
        raw = s.get("jpg", s.get("jpeg"))
        if raw is None or raw[:2] != b"\xff\xd8":
            log.add("not a JPEG")
            return None
        caption = _caption(s, log, seed, epoch)
        if caption is None:
            return None
        box = None  # no RandomResizedCrop in the transform: gpu_transform takes the centred square
        try:
            with Image.open(io.BytesIO(raw)) as shown:  # the header only: orientation and size, read once
                upright = not exif_rotated(shown)
            if not upright:  # nvJPEG ignores EXIF orientation: turn it upright here (make_shards already does)
                shown = open_image(raw)
                raw = encode_jpeg(shown)
            if crop is not None:  # the box on the image as shown (its size needs no pixels)
                _seed_sample(seed, epoch, s)
                box = crop.get_params(shown, crop.scale, crop.ratio)
        except (UnreadableImage, OSError, ValueError, Image.DecompressionBombError):
            log.add("corrupt image")
            return None
        return {"key": s.get("__key__", "?"), "image": torch.frombuffer(bytearray(raw), dtype=torch.uint8),
                "caption": caption, "box": box}

    def stage(samples):
        for s in samples:
            kept = one(s)
            progress.sample_decoded(kept is not None)
            if kept is not None:
                yield kept

    return stage


def _seed_sample(seed: int, epoch: int, sample: Sample) -> None:
    # the CPU generator only: torch.manual_seed would also queue a lazy CUDA seeding call,
    # with a formatted stack trace, for every sample (0.4 ms each, and a list that grows)
    torch.default_generator.manual_seed(zlib.crc32(f"{seed}/{epoch}/{sample.get('key', sample.get('__key__', '?'))}".encode()))


def augment(transform: Callable, seed: int, epoch: int, batch_size: int) -> Callable[[Iterator[Sample]], Iterator[Sample]]:
    """Apply the image transform with torch randomness seeded by (seed, epoch, sample key).
    The train crop on its own (uint8 pixels out) resizes each image straight into its row of
    the next batch, in shared memory: batch_and_tokenize takes the samples in this order,
    batch_size at a time, and finds them stacked already (_stack_shared)."""
    crop = _only_crop(transform)

    def stage(samples):
        rows, filled = None, batch_size
        for s in samples:
            _seed_sample(seed, epoch, s)
            if crop is None:
                s["image"] = transform(s["image"])
            else:
                if filled == batch_size:  # [B, 3, S, S] channels-last, as _stack_shared would make it
                    rows, filled = _shared_empty((batch_size, *crop.size, 3), torch.uint8).permute(0, 3, 1, 2), 0
                s["image"] = crop(s["image"], out=rows[filled: filled + 1])
                filled += 1
            yield s

    return stage


def _takes_pixels(transform: Callable) -> bool:
    """Does the transform start with RandomResizedCropPixels (which crops decoded pixels as
    well as PIL images)?"""
    steps = getattr(transform, "transforms", [transform])
    return bool(steps) and isinstance(steps[0], RandomResizedCropPixels)


def _only_crop(transform: Callable) -> Optional[RandomResizedCropPixels]:
    """The transform's RandomResizedCropPixels when it is all the transform does."""
    steps = getattr(transform, "transforms", [transform])
    return steps[0] if len(steps) == 1 and _takes_pixels(transform) else None


def _stack_shared(images: List[torch.Tensor]) -> torch.Tensor:
    """torch.stack into shared memory (a DataLoader worker then sends the batch without copying
    it once more into a shared segment), in the images' own layout: the train crop's pixels
    [3, S, S] are channels-last in memory, and a batch [B, 3, S, S] kept channels-last takes
    them in plain copies (a transposing stack cost a worker as much as the resize); to_device
    transposes it on the GPU."""
    first = images[0]
    row = first.numel()
    if (first.untyped_storage().data_ptr() == images[-1].untyped_storage().data_ptr()
            and [image.storage_offset() for image in images] == list(range(0, len(images) * row, row))):
        return first.as_strided((len(images), *first.shape), (row, *first.stride()))  # augment's rows, in order
    if first.dim() == 3 and not first.is_contiguous() and first.permute(1, 2, 0).is_contiguous():
        channels_last = [image.permute(1, 2, 0) for image in images]  # [S, S, 3] each, contiguous
        out = _shared_empty((len(images), *channels_last[0].shape), first.dtype)
        return torch.stack(channels_last, out=out).permute(0, 3, 1, 2)
    return torch.stack(images, out=_shared_empty((len(images), *first.shape), first.dtype))


def _cat_shared(parts: List[torch.Tensor]) -> torch.Tensor:
    """torch.cat into one shared segment (a list of tensors would cost a segment and a file
    descriptor each on the way to the main process)."""
    return torch.cat(parts, out=_shared_empty((sum(len(p) for p in parts),), parts[0].dtype))


def _shared_empty(shape, dtype) -> torch.Tensor:
    """torch.empty in shared memory inside a DataLoader worker (allocated there directly:
    share_memory_ would copy the empty tensor into it), in ordinary memory elsewhere."""
    if torch.utils.data.get_worker_info() is None:
        return torch.empty(shape, dtype=dtype)
    return torch.empty(0, dtype=dtype).set_(torch.UntypedStorage._new_shared(math.prod(shape) * dtype.itemsize)).view(shape)


def batch_and_tokenize(batch_size: int, context_length: int, trim_text: bool, log: SkipLog, progress: WorkerProgress,
                       limit: Optional[int], worker: int):
    def stage(samples):
        from ..tokenizer import get_tokenizer

        tokenizer = get_tokenizer(context_length)
        pending = []
        if limit is not None and progress.batches >= limit:
            return
        for s in samples:
            pending.append(s)
            if len(pending) == batch_size:
                tokens = tokenizer([p["caption"] for p in pending])
                if trim_text:
                    tokens = tokens[:, : int((tokens != 0).sum(1).max())]
                images = [p["image"] for p in pending]
                progress.batches += 1
                batch = {"tokens": tokens, "captions": [p["caption"] for p in pending], "keys": [p["key"] for p in pending],
                         "skipped": log.drain(), "worker": worker, "position": (progress.consumed, progress.batches)}
                if images[0].dim() == 1:  # gpu_decode: JPEG bytes packed in one tensor, a crop box per image
                    batch["images"] = _cat_shared(images)
                    batch["jpeg_ends"] = torch.tensor([len(i) for i in images], dtype=torch.int64).cumsum(0)
                    if pending[0]["box"] is not None:
                        batch["boxes"] = torch.tensor([p["box"] for p in pending], dtype=torch.int64)
                else:
                    batch["images"] = _stack_shared(images)
                yield batch
                pending = []
                if limit is not None and progress.batches >= limit:
                    break
        leftover = log.drain()
        if leftover:  # what was skipped after the last full batch: a tally with no samples
            yield {"skipped": leftover, "worker": worker, "captions": [], "keys": []}

    return stage


def is_tally(batch: dict) -> bool:
    """A worker's last item when it skipped samples after its last full batch: counts only."""
    return "images" not in batch


def count_unreadable_shards(log: SkipLog) -> Callable[[Exception], bool]:
    """webdataset error handler: count the bad shard (or tar member) and keep going."""

    def handler(exn: Exception) -> bool:
        log.add("unreadable shard")
        return True

    return handler


def _random_crop(transform: Callable) -> Optional[T.RandomResizedCrop]:
    """The RandomResizedCrop of a torchvision Compose, if it has one."""
    return next((t for t in getattr(transform, "transforms", []) if isinstance(t, T.RandomResizedCrop)), None)


def draft_side(transform: Callable) -> int:
    """The short side an image can be decoded down to and still give every crop the transform
    may take at least its output's pixels: size / sqrt(3/4 * the smallest crop scale) for a
    RandomResizedCrop (the thinnest, smallest crop), the output size for a resize + centre crop;
    0 (full decode) for other transforms."""
    crop = _random_crop(transform)
    if crop is not None:
        return math.ceil(max(crop.size) / math.sqrt(0.75 * crop.scale[0]))
    resize = next((t for t in getattr(transform, "transforms", []) if isinstance(t, T.Resize)), None)
    return resize.size if resize is not None and isinstance(resize.size, int) else 0


class ShardDataset(torch.utils.data.IterableDataset):
    """The whole pipeline for one rank; iterate it through a DataLoader with batch_size=None."""

    def __init__(self, spec: StreamSpec, transform: Callable, context_length: int, trim_text: bool = True):
        super().__init__()
        self.spec, self.transform, self.context_length, self.trim_text = spec, transform, context_length, trim_text

    def __iter__(self):
        spec = self.spec
        worker, _ = _worker(spec)
        log = SkipLog()
        consumed, batches = spec.resume.get(worker, (0, 0))
        n_urls = sum(len(src) for src in spec.sources)
        stall = None
        if spec.resampled:  # an endless stream: stop it when nothing usable comes out
            known = sum(spec.shard_samples.values())
            stall = (max(10, 2 * n_urls), max(1000, 2 * known) if known else 100_000)
        progress = WorkerProgress(consumed, batches, *(stall or (None, None)))
        stages = [
            lambda _: shard_urls(spec),
            read_shards(log, progress, spec.shard_samples),
            shuffle(spec.shuffle_buffer, _rng(spec, "shuffle")),
            skip(progress),
            raw_jpegs(log, progress, _random_crop(self.transform), spec.seed, spec.epoch) if spec.gpu_decode
            else decode(log, progress, spec.seed, spec.epoch, draft_side(self.transform), _takes_pixels(self.transform)),
            (lambda samples: samples) if spec.gpu_decode else augment(self.transform, spec.seed, spec.epoch, spec.batch_size),
            batch_and_tokenize(spec.batch_size, self.context_length, self.trim_text, log, progress, spec.batches_per_worker, worker),
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
