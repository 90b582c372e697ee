"""Move (and, with ``data.gpu_decode``, decode) the next batches on side CUDA streams in
background threads while the GPU trains on the current one.

``threads`` threads take the next batches from the loader in turn, each preparing its batch on
its own stream, and the batches come out in the loader's order. More than one pays with
``data.gpu_decode``, where preparing a batch (decode, crop, copies) takes about as long as a
training step in one thread while the GPU works on the batch only a few milliseconds
(docs/benchmarks.md, "Data-fed training").

On the CPU (unless ``threaded=True``, which the tests use) or with ``depth=0``, batches are
moved one by one in the calling thread.
"""
from __future__ import annotations

import sys
import threading
from typing import Any, Callable, Iterable, Iterator, Optional, Tuple, Union

import torch

from ..models.packing import PackedTokens, pack_tokens

_DONE = object()


def _tensors(value) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from _tensors(v)


class _Ordered:
    """Prepared batches by their index in the loader: threads put them in any order, the
    consumer takes them in order; a thread waits while its batch is ``capacity`` or more ahead."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.items: dict = {}
        self.taken = 0  # batches handed to the consumer
        self.stop = False
        self.changed = threading.Condition()

    def put(self, index: int, item) -> None:
        with self.changed:
            while not self.stop and index >= self.taken + self.capacity:
                self.changed.wait()
            self.items[index] = item
            self.changed.notify_all()

    def take(self):
        with self.changed:
            while self.taken not in self.items:
                self.changed.wait()
            item = self.items.pop(self.taken)
            self.taken += 1
            self.changed.notify_all()
            return item

    def close(self) -> None:
        with self.changed:
            self.stop = True
            self.changed.notify_all()


def prefetch_to_device(batches: Iterable[Any], to_device: Callable[[Any], Any], device: torch.device,
                       depth: int = 2, threaded: bool = False, threads: int = 1,
                       switch_interval: Optional[float] = None, priority: int = 0) -> Iterator[Tuple[Any, Any]]:
    """Yield ``(batch, to_device(batch))`` in order, with up to ``max(depth, threads)`` batches
    prepared ahead by ``threads`` threads. ``switch_interval``: the interpreter's thread switch
    interval while they run (None leaves Python's 5 ms; a shorter one was measured, no gain);
    ``priority``: their CUDA streams' (-1: ahead of the training's kernels)."""
    device = torch.device(device)
    cuda = device.type == "cuda"
    if depth <= 0 or not (cuda or threaded):
        for batch in batches:
            yield batch, to_device(batch)
        return
    source = iter(batches)
    reading = threading.Lock()  # one thread at a time takes the next batch (and its index)
    state = {"next": 0, "ended": False}
    ordered = _Ordered(max(depth, threads))

    def prepare(batch, stream):
        if not cuda:
            return to_device(batch), None
        with torch.cuda.device(device), torch.cuda.stream(stream):
            moved = to_device(batch)
            done = torch.cuda.Event()
            done.record(stream)
        return moved, done

    def work():
        stream = torch.cuda.Stream(device, priority=priority) if cuda else None
        while not ordered.stop:
            with reading:
                if state["ended"]:
                    return
                index = state["next"]
                state["next"] += 1
                try:
                    item = next(source)
                except BaseException as error:  # the end, or an error handed to the consumer, raised there
                    state["ended"] = True
                    item = _DONE if isinstance(error, StopIteration) else error
            if item is not _DONE and not isinstance(item, BaseException):
                try:
                    item = (item, *prepare(item, stream))
                except BaseException as error:
                    state["ended"] = True
                    item = error
            ordered.put(index, item)
            if not isinstance(item, tuple):
                return

    workers = [threading.Thread(target=work, name=f"prefetch_to_device_{i}", daemon=True) for i in range(threads)]
    previous_interval = sys.getswitchinterval()
    if switch_interval is not None:
        sys.setswitchinterval(switch_interval)
    for worker in workers:
        worker.start()
    try:
        while True:
            item = ordered.take()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            batch, moved, done = item
            if cuda:
                current = torch.cuda.current_stream(device)
                current.wait_event(done)
                for tensor in _tensors(moved):  # made on a side stream, used and freed on this one
                    tensor.record_stream(current)
            yield batch, moved
    finally:
        ordered.close()  # threads waiting to put a batch stop; one reading the loader stops after that batch
        for worker in workers:
            worker.join()
        sys.setswitchinterval(previous_interval)


def to_device(batch: dict, device: torch.device, image_size: int, jpeg_decoder: str = "auto", pack_text: bool = False
              ) -> Optional[Tuple[torch.Tensor, Union[torch.Tensor, PackedTokens]]]:
    """A loader batch -> (normalised images [B, 3, S, S], tokens [B, T] or, with ``pack_text``,
    the captions packed on the host: models/packing.py) on ``device``; None for a worker's
    closing tally of skipped samples.

    Workers send uint8 pixels (normalised here, a quarter of the bytes through shared and pinned
    memory) or, with ``data.gpu_decode``, packed JPEG bytes decoded here; an image that fails to
    decode drops out with its tokens and is counted in the batch's own tally (this may run in
    the prefetch thread)."""
    from ..transforms import normalize_images

    if "images" not in batch:
        return None
    tokens = batch["tokens"]  # [B, T] on the host
    if "jpeg_ends" in batch:
        from .gpu_decode import gpu_transform, unpack_jpegs

        images, keep = gpu_transform(unpack_jpegs(batch["images"], batch["jpeg_ends"]), image_size, device, batch.get("boxes"),
                                     jpeg_decoder)
        if not keep.all():
            skipped = batch["skipped"]
            skipped["corrupt image"] = skipped.get("corrupt image", 0) + int((~keep).sum())
            tokens = tokens[keep]
    else:
        images = batch["images"].to(device, non_blocking=True)
        images = normalize_images(images) if images.dtype == torch.uint8 else images
    tokens = pack_tokens(tokens) if pack_text else tokens
    return images, tokens.to(device, non_blocking=True)
