"""Decode and augment JPEG batches on the GPU, so that data workers only read shards and
tokenise. Used when ``data.gpu_decode`` is set. Two decoders (``data.jpeg_decoder``):

* ``nvimgcodec``: NVIDIA nvImageCodec (``pip install "clipscratch[gpu]"``), whose hardware
  backend runs on the H100's JPEG engines beside the SMs, falling back to its CUDA decoder;
* ``torchvision``: nvJPEG through ``torchvision.io.decode_jpeg`` (its Huffman stage on the CPU);
* ``auto``: nvImageCodec when it is installed and the device is a GPU, else torchvision.

Crops follow RandomResizedCrop: the data workers draw each box from the JPEG header's size
with the same per-sample seed as the CPU path, so both crop the same regions; the resize is a box-filter
shrink by the crops' common integer factor (antialiasing) and then one batched bilinear
``grid_sample`` per image size: close to, not bit-equal with, the CPU path's bicubic.
"""
from __future__ import annotations

import functools
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torchvision.io import ImageReadMode, decode_jpeg

from ..transforms import OPENAI_MEAN, OPENAI_STD


def _decode_torchvision(jpegs: List[torch.Tensor], device) -> List[Optional[torch.Tensor]]:
    try:
        return decode_jpeg(jpegs, mode=ImageReadMode.RGB, device=device)
    except RuntimeError:  # one bad file fails the batch: decode one by one, keep what decodes
        out = []
        for j in jpegs:
            try:
                out.append(decode_jpeg(j, mode=ImageReadMode.RGB, device=device))
            except RuntimeError:
                out.append(None)
        return out


@functools.lru_cache(maxsize=4)
def _nvimgcodec_decoder(device_index: int):
    from nvidia import nvimgcodec

    kinds = nvimgcodec.BackendKind
    # a few parsing threads: the data workers own the other cores
    return nvimgcodec.Decoder(device_id=device_index, max_num_cpu_threads=4,
                              backends=[nvimgcodec.Backend(kinds.HW_GPU_ONLY), nvimgcodec.Backend(kinds.GPU_ONLY)])


def nvimgcodec_available() -> bool:
    try:
        from nvidia import nvimgcodec  # noqa: F401
    except ImportError:
        return False
    return True


# Per device, the last batch's decoded images and the CUDA stream that decoded them, handed back
# to the decoder to be refilled: their buffers are reused instead of freed and allocated again (a
# free waits for the whole GPU). Reuse is safe on that same stream, where every use of the last
# batch comes first; a batch on another stream (the next epoch's prefetch) starts afresh.
_reusable: dict = {}


def _decode_nvimgcodec(jpegs: List[torch.Tensor], device) -> List[Optional[torch.Tensor]]:
    """[3, H, W] uint8 images on ``device`` (None where decoding failed), through nvImageCodec.
    The tensors share the decoder's buffers: they are valid until the next call on this stream."""
    device = torch.device(device)
    decoder = _nvimgcodec_decoder(device.index if device.index is not None else torch.cuda.current_device())
    stream = torch.cuda.current_stream(device).cuda_stream
    last_stream, last = _reusable.get(device, (None, []))
    previous = [im for im in last if im is not None] if last_stream == stream else []
    reuse = previous[: len(jpegs)] if len(previous) >= len(jpegs) else None
    decoded = decoder.decode([j.numpy() for j in jpegs], images=reuse, cuda_stream=stream)
    _reusable[device] = (stream, decoded)
    out = []
    for image in decoded:
        try:
            # through the CUDA array interface: torch.from_dlpack measured slower here (docs/benchmarks.md)
            out.append(None if image is None else torch.as_tensor(image, device=device).permute(2, 0, 1))  # HWC -> CHW
        except (RuntimeError, TypeError, ValueError):
            out.append(None)
    return out


def _decode(jpegs: List[torch.Tensor], device, decoder: str = "auto") -> List[Optional[torch.Tensor]]:
    use_nvimgcodec = decoder == "nvimgcodec" or (decoder == "auto" and torch.device(device).type == "cuda"
                                                 and nvimgcodec_available())
    return _decode_nvimgcodec(jpegs, device) if use_nvimgcodec else _decode_torchvision(jpegs, device)


def unpack_jpegs(packed: torch.Tensor, ends: torch.Tensor) -> List[torch.Tensor]:
    """The per-image JPEG byte tensors of a gpu_decode batch (views of ``packed``)."""
    starts = [0] + ends[:-1].tolist()
    return [packed[s:e] for s, e in zip(starts, ends.tolist())]


def _center_box(h: int, w: int) -> Tuple[int, int, int, int]:
    """(top, left, height, width) of the centred square."""
    side = min(h, w)
    return (h - side) // 2, (w - side) // 2, side, side


def _to_device(rows: list, device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A small host table -> ``device`` through pinned memory: a copy from pageable memory would
    first wait for everything queued on the stream."""
    table = torch.tensor(rows, dtype=dtype)
    if torch.device(device).type == "cuda":
        table = table.pin_memory()
    return table.to(device, non_blocking=True)


def _resized_crops(images: List[torch.Tensor], boxes: List[Tuple[int, int, int, int]], size: int) -> torch.Tensor:
    """Crop each image [3, h, w] to its (top, left, height, width) box and resize it to
    ``size`` x ``size``: [n, 3, size, size]. Boxes much larger than ``size`` are first shrunk
    by an integer box filter (k x k averages, k = the box's short side // size), so that the
    bilinear sampling does not alias; images are sampled together per k."""
    groups: dict = {}
    for i, (_, _, h, w) in enumerate(boxes):
        groups.setdefault(max(1, min(h, w) // size), []).append(i)
    parts = [_sample_crops([images[i] for i in idx], [boxes[i] for i in idx], size, k) for k, idx in groups.items()]
    if len(parts) == 1:
        return parts[0]
    order = [i for idx in groups.values() for i in idx]
    out = torch.empty(len(images), 3, size, size, device=images[0].device)
    out[_to_device(order, out.device, torch.long)] = torch.cat(parts)
    return out


def _sample_crops(images: List[torch.Tensor], boxes: List[Tuple[int, int, int, int]], size: int, k: int) -> torch.Tensor:
    """One batched crop-and-resize: images of one size are stacked whole (shards written at one
    size); images of several sizes have their boxes cut out into one zero canvas, so that a batch
    of photos of many sizes costs one sampling, not one per size. Every number the sampling needs
    is computed on the host: nothing here waits for the GPU."""
    if len({tuple(im.shape) for im in images}) == 1:
        canvas = torch.stack(images)  # [n, 3, h, w]
        valid = [tuple(im.shape[1:]) for im in images]
    else:
        canvas = images[0].new_zeros(len(images), 3, max(b[2] for b in boxes), max(b[3] for b in boxes))
        for j, (im, (top, left, h, w)) in enumerate(zip(images, boxes)):
            canvas[j, :, :h, :w] = im[:, top : top + h, left : left + w]
        valid = [(h, w) for _, _, h, w in boxes]
        boxes = [(0, 0, h, w) for _, _, h, w in boxes]
    x = canvas.float()
    if k > 1:
        x = F.avg_pool2d(x, k)  # the first k * (h // k) rows, k * (w // k) columns of the canvas
    Hc, Wc = x.shape[-2:]
    H, W = Hc * k, Wc * k  # the canvas extent the pooled pixels cover, in input pixels
    rows = []
    for (top, left, height, width), (h, w) in zip(boxes, valid):
        # affine map from the output's [-1, 1] grid to the box in the canvas' [-1, 1] coordinates, and
        # the centre of each image's last whole (pooled) pixel: sampling stops there as at a border
        rows.append([width / W, 0.0, (2 * left + width) / W - 1, 0.0, height / H, (2 * top + height) / H - 1,
                     (2 * (w // k) - 1) / Wc - 1, (2 * (h // k) - 1) / Hc - 1])
    table = _to_device(rows, x.device)  # [n, 8]
    grid = F.affine_grid(table[:, :6].view(-1, 2, 3), [len(images), 3, size, size], align_corners=False)
    grid = torch.minimum(grid, table[:, None, None, 6:])  # [n, size, size, 2]
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def gpu_transform(jpegs: List[torch.Tensor], image_size: int, device,
                  boxes: Optional[torch.Tensor] = None, decoder: str = "auto") -> Tuple[torch.Tensor, torch.Tensor]:
    """JPEG byte tensors -> (normalised images [B, 3, S, S] on ``device``, bool mask of the decoded ones).

    ``boxes`` [B, 4] holds each image's crop (top, left, height, width), as the data workers
    draw them (RandomResizedCrop's draw, seeded per sample as on the CPU path); None takes
    the centred square. The crops are resized together (_resized_crops): a few kernels per
    batch, not one resize per image.
    """
    decoded = _decode(jpegs, device, decoder)
    keep = torch.tensor([d is not None for d in decoded])
    images = [d for d in decoded if d is not None]
    if boxes is not None:
        boxes = [tuple(b) for b, k in zip(boxes.tolist(), keep.tolist()) if k]
    else:
        boxes = [_center_box(*im.shape[1:]) for im in images]
    if not images:
        return torch.empty(0, 3, image_size, image_size, device=device), keep
    out = _resized_crops(images, boxes, image_size)
    mean, std = (_to_device([[255 * v for v in values]], device).view(1, 3, 1, 1) for values in (OPENAI_MEAN, OPENAI_STD))
    return (out - mean) / std, keep
