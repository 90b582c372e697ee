"""The text tower beside the image tower: its kernels on a second CUDA stream.

At caption lengths the text tower is many small kernels (a few thousand packed tokens at width
512), too small to fill an H100, run after the image tower's on one stream: about 4.4 ms of
ViT-B/16's 73.5-ms step (docs/benchmarks.md, part 87). On a side stream they can run in the gaps
the image tower's kernels leave: 1.0-1.3 ms less (parts 91-92). The arithmetic is the same kernels on the same inputs, so the
features and gradients are the one-stream path's.

The synchronisation, in ``run_beside``:
- the side stream first waits for everything queued on the caller's stream (the batch's copy,
  the last optimizer step);
- the caller's stream waits for the side stream before the loss reads the text features;
- the backward needs nothing more: autograd runs each node's backward on its forward's stream,
  syncs streams where a gradient crosses between them, and makes the stream that called
  ``backward()`` wait for the gradients of leaves (docs: "Stream semantics of backward passes");
- the caching allocator learns which stream reads what it did not allocate (``record_stream``),
  so that no block is handed out again while the other stream may still read it.

Under DistributedDataParallel the reducer keeps each parameter's AccumulateGrad node from its
construction, made on the stream current then (the main one). So autograd accumulates the text
tower's gradients on the main stream after waiting for the side stream, and the reducer's bucket
copies and all-reduces (which wait on the current stream, with NCCL and gloo alike) follow them:
every all-reduce started on the main stream and the weights equalled one stream's, bit for bit
(docs/benchmarks.md, part 103). Autograd warns once a process of the stream mismatch this is
built on; ``expect_ddp_accumulation`` silences that warning for training with more than one process.
"""
from __future__ import annotations

from typing import Callable, Dict, Iterable, Tuple

import torch

_STREAMS: Dict[Tuple[int, int], "torch.cuda.Stream"] = {}


def side_stream(device: torch.device, priority: int = 0) -> "torch.cuda.Stream":
    """One side stream per device and priority (CUDA: lower numbers run first; -1 is high), made
    once: creating a stream per step would leak the allocator's per-stream pools."""
    key = (device.index if device.index is not None else torch.cuda.current_device(), priority)
    if key not in _STREAMS:
        _STREAMS[key] = torch.cuda.Stream(device=key[0], priority=priority)
    return _STREAMS[key]


def _tensors(x) -> Iterable[torch.Tensor]:
    """The tensors of a tensor or of a tuple of them (PackedTokens)."""
    return x if isinstance(x, tuple) else (x,)


def keep_for(tensor: torch.Tensor, stream) -> None:
    """The allocator keeps ``tensor``'s memory until ``stream``'s work queued so far is done."""
    tensor.record_stream(stream)


def expect_ddp_accumulation(processes: int) -> None:
    """With more than one process (DDP), silence autograd's warning that the text parameters'
    AccumulateGrad nodes run on the main stream, not their gradients' side stream: the module
    docstring's ordering relies on it. Torch releases without the switch do not warn either."""
    quiet = getattr(torch.autograd.graph, "set_warn_on_accumulate_grad_stream_mismatch", None)
    if processes > 1 and quiet is not None:
        quiet(False)


def run_beside(side, text_fn: Callable, tokens, image_fn: Callable, images: torch.Tensor):
    """(image_fn(images), text_fn(tokens)): the text on ``side``, the image on the current stream,
    both queued before either is waited for."""
    main = torch.cuda.current_stream(images.device)
    side.wait_stream(main)  # the batch is written and the last step's update is done
    with torch.cuda.stream(side):
        text = text_fn(tokens)  # [B, E]
    for t in _tensors(tokens):
        keep_for(t, side)  # allocated on the main stream, read on the side one
    image = image_fn(images)  # [B, E]
    main.wait_stream(side)
    keep_for(text, main)  # allocated on the side stream, read on the main one
    return image, text
