"""Decode and augment JPEG batches on the GPU, so that data workers only read shards and
tokenise. Used when ``data.gpu_decode`` is set. Two decoders (``data.jpeg_decoder``):

* ``nvimgcodec``: NVIDIA nvImageCodec (``pip install "clipscratch[gpu]"``), whose hardware
  backend runs on the H100's JPEG engines beside the SMs, falling back to its CUDA decoder;
* ``torchvision``: nvJPEG through ``torchvision.io.decode_jpeg`` (its Huffman stage on the CPU);
* ``auto``: nvImageCodec when it is installed and the device is a GPU, else torchvision.

Crops follow RandomResizedCrop: the data workers draw each box from the JPEG header's size
with the same per-sample seed as the CPU path, so both crop the same regions; the resize is a box-filter
shrink by the crops' common integer factor (antialiasing) and then one batched bilinear
``grid_sample`` per image size: close to, not bit-equal with, PIL's bicubic.
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


# The last batch's decoded images per CUDA stream, handed back to the decoder to be refilled: their
# device buffers are reused instead of freed and allocated again (a free waits for the whole GPU).
# Reuse is safe on the stream that decoded them, where every use of the last batch comes first.
_reusable: dict = {}


def _decode_nvimgcodec(jpegs: List[torch.Tensor], device) -> List[Optional[torch.Tensor]]:
    """[3, H, W] uint8 images on ``device`` (None where decoding failed), through nvImageCodec.
    The tensors share the decoder's buffers: they are valid until the next call on this stream."""
    device = torch.device(device)
    decoder = _nvimgcodec_decoder(device.index if device.index is not None else torch.cuda.current_device())
    stream = torch.cuda.current_stream(device).cuda_stream
    previous = [im for im in _reusable.get((device, stream), []) if im is not None]
    reuse = previous[: len(jpegs)] if len(previous) >= len(jpegs) else None
    decoded = decoder.decode([j.numpy() for j in jpegs], images=reuse, cuda_stream=stream)
    _reusable[(device, stream)] = decoded
    out = []
    for image in decoded:
        try:
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


def _resized_crops(stack: torch.Tensor, boxes: List[Tuple[int, int, int, int]], size: int) -> torch.Tensor:
    """Crop each image of ``stack`` [n, 3, h, w] to its (top, left, height, width) box and
    resize to ``size`` x ``size``: [n, 3, size, size]."""
    n, _, h, w = stack.shape
    box = torch.tensor(boxes, dtype=torch.float32, device=stack.device)  # [n, 4]
    shrink = int(box[:, 2:].min().item() // size)
    if shrink > 1:  # average k x k blocks first, so that bilinear sampling below does not alias
        stack = F.avg_pool2d(stack, shrink)  # covers the first k * (h // k) rows, k * (w // k) columns
        h, w = stack.shape[-2] * shrink, stack.shape[-1] * shrink
    top, left, height, width = box.unbind(1)
    # affine map from the output's [-1, 1] grid to the crop, in the input's [-1, 1] coordinates
    theta = torch.zeros(n, 2, 3, device=stack.device)
    theta[:, 0, 0] = width / w
    theta[:, 0, 2] = (2 * left + width) / w - 1
    theta[:, 1, 1] = height / h
    theta[:, 1, 2] = (2 * top + height) / h - 1
    grid = F.affine_grid(theta, [n, 3, size, size], align_corners=False)
    return F.grid_sample(stack, grid, mode="bilinear", padding_mode="border", align_corners=False)


def gpu_transform(jpegs: List[torch.Tensor], image_size: int, device,
                  boxes: Optional[torch.Tensor] = None, decoder: str = "auto") -> Tuple[torch.Tensor, torch.Tensor]:
    """JPEG byte tensors -> (normalised images [B, 3, S, S] on ``device``, bool mask of the decoded ones).

    ``boxes`` [B, 4] holds each image's crop (top, left, height, width), as the data workers
    draw them (RandomResizedCrop's draw, seeded per sample as on the CPU path); None takes
    the centred square. Images of one size are stacked and cropped-and-resized together: a
    few kernels per distinct image size instead of one resize per image.
    """
    decoded = _decode(jpegs, device, decoder)
    keep = torch.tensor([d is not None for d in decoded])
    images = [d for d in decoded if d is not None]
    if boxes is not None:
        boxes = [tuple(b) for b, k in zip(boxes.tolist(), keep.tolist()) if k]
    out = torch.empty(len(images), 3, image_size, image_size, device=device)
    groups = {}
    for i, img in enumerate(images):
        groups.setdefault(tuple(img.shape[1:]), []).append(i)
    for (h, w), idx in groups.items():
        group_boxes = [boxes[i] if boxes is not None else _center_box(h, w) for i in idx]
        stack = torch.stack([images[i] for i in idx]).float()  # [n, 3, h, w]
        out[torch.tensor(idx, device=device)] = _resized_crops(stack, group_boxes, image_size)
    mean = torch.tensor(OPENAI_MEAN, device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(OPENAI_STD, device=device).view(1, 3, 1, 1) * 255
    return (out - mean) / std, keep
