"""Move (and, with ``data.gpu_decode``, decode) the next batches on a side CUDA stream in a
background thread while the GPU trains on the current one.

On the CPU (unless ``threaded=True``, which the tests use) or with ``depth=0``, batches are
moved one by one in the calling thread.
"""
from __future__ import annotations

import queue
import threading
from typing import Any, Callable, Iterable, Iterator, Tuple

import torch

_DONE = object()


def _tensors(value) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from _tensors(v)


def prefetch_to_device(batches: Iterable[Any], to_device: Callable[[Any], Any], device: torch.device,
                       depth: int = 2, threaded: bool = False) -> Iterator[Tuple[Any, Any]]:
    """Yield ``(batch, to_device(batch))`` in order, with up to ``depth`` batches prepared ahead."""
    device = torch.device(device)
    cuda = device.type == "cuda"
    if depth <= 0 or not (cuda or threaded):
        for batch in batches:
            yield batch, to_device(batch)
        return
    ready: "queue.Queue" = queue.Queue(maxsize=depth)
    stop = threading.Event()
    stream = torch.cuda.Stream(device) if cuda else None

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
