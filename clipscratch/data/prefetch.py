"""Move (and, with ``data.gpu_decode``, decode) the next batches on a side CUDA stream in a
background thread while the GPU trains on the current one.

On the CPU (unless ``threaded=True``, which the tests use) or with ``depth=0``, batches are
moved one by one in the calling thread.
"""
from __future__ import annotations

import queue
import sys
import threading
import time
from typing import Any, Callable, Iterable, Iterator, Optional, Tuple, Union

import torch

from ..models.packing import PackedTokens

_DONE = object()


def _tensors(value) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from _tensors(v)


def prefetch_to_device(batches: Iterable[Any], to_device: Callable[[Any], Any], device: torch.device,
                       depth: int = 2, threaded: bool = False, switch_interval: Optional[float] = None,
                       priority: int = 0) -> Iterator[Tuple[Any, Any]]:
    """Yield ``(batch, to_device(batch))`` in order, with up to ``depth`` batches prepared ahead.
    ``switch_interval``: the interpreter's thread switch interval while the thread runs (None
    leaves Python's 5 ms); ``priority``: its CUDA stream's (-1: ahead of the training's
    kernels). Neither changed fed training beyond the spread between runs (docs/benchmarks.md)."""
    device = torch.device(device)
    cuda = device.type == "cuda"
    if depth <= 0 or not (cuda or threaded):
        for batch in batches:
            yield batch, to_device(batch)
        return
    ready: "queue.Queue" = queue.Queue(maxsize=depth)
    stop = threading.Event()
    stream = torch.cuda.Stream(device, priority=priority) if cuda else None

    def prepare(batch):
        if not cuda:
            return to_device(batch), None
        with torch.cuda.device(device), torch.cuda.stream(stream):
            moved = to_device(batch)
            done = torch.cuda.Event()
            done.record(stream)
        return moved, done

    def work():
        try:
            for batch in batches:
                moved, done = prepare(batch)
                while not stop.is_set():
                    try:
                        ready.put((batch, moved, done), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
        except BaseException as error:  # handed to the consumer, raised there
            ready.put(error)
            return
        ready.put(_DONE)

    thread = threading.Thread(target=work, name="prefetch_to_device", daemon=True)
    previous_interval = sys.getswitchinterval()
    if switch_interval is not None:
        sys.setswitchinterval(switch_interval)
    thread.start()
    try:
        while True:
            item = ready.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            batch, moved, done = item
            if cuda:
                current = torch.cuda.current_stream(device)
                current.wait_event(done)
                for tensor in _tensors(moved):  # made on the side stream, used and freed on this one
                    tensor.record_stream(current)
            yield batch, moved
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                ready.get(timeout=0.1)
            except queue.Empty:
                pass
        sys.setswitchinterval(previous_interval)


def to_device(batch: dict, device: torch.device, image_size: int, jpeg_decoder: str = "auto",
              pack: Optional[Callable[[torch.Tensor], PackedTokens]] = None
              ) -> Optional[Tuple[torch.Tensor, Union[torch.Tensor, PackedTokens]]]:
    """A loader batch -> (normalised images [B, 3, S, S], tokens [B, T] or, with ``pack``
    (models/packing.py's pack_tokens, or a partial of it), the captions packed by it on the
    host) on ``device``; None for a worker's closing tally of skipped samples.

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
        images = batch["images"].to(device, non_blocking=True).contiguous()  # channels-last from the workers' crop
        images = normalize_images(images) if images.dtype == torch.uint8 else images
    tokens = pack(tokens) if pack is not None else tokens
    return images, tokens.to(device, non_blocking=True)


def waited(batches: Iterator[Any], wait_ms: list) -> Iterator[Any]:
    """``batches``, noting in ``wait_ms`` how long each ``next`` blocks (ms): the time the
    training loop waits for its data."""
    while True:
        t = time.perf_counter()
        try:
            batch = next(batches)
        except StopIteration:
            return
        wait_ms.append((time.perf_counter() - t) * 1000)
        yield batch
