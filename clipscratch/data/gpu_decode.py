"""Decode and augment JPEG batches on the GPU (nvJPEG through torchvision), so that data
workers only read shards and tokenise. Used when ``data.gpu_decode`` is set.

Crops follow RandomResizedCrop (parameters drawn on the CPU); the resize is an
antialiased bilinear resampling (roi_align), close to but not bit-equal with PIL's bicubic.
"""
from __future__ import annotations

from typing import List, Tuple

import torch
from torchvision.ops import roi_align
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms import RandomResizedCrop

from ..transforms import OPENAI_MEAN, OPENAI_STD


def _decode(jpegs: List[torch.Tensor], device) -> List:
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


def _crop_box(h: int, w: int, train: bool, scale) -> Tuple[int, int, int, int]:
    """(top, left, height, width): RandomResizedCrop's draw in training, the centred square otherwise."""
    if train:
        return RandomResizedCrop.get_params(torch.empty(1, h, w), scale=list(scale), ratio=[3 / 4, 4 / 3])
    side = min(h, w)
    return (h - side) // 2, (w - side) // 2, side, side


def gpu_transform(jpegs: List[torch.Tensor], image_size: int, device, train: bool = True,
                  scale: Tuple[float, float] = (0.9, 1.0)) -> Tuple[torch.Tensor, torch.Tensor]:
    """JPEG byte tensors -> (normalised images [B, 3, S, S] on ``device``, bool mask of the decoded ones).

    Images of one size are stacked and cropped-and-resized together by ``roi_align``
    (bilinear samples averaged over each output pixel's footprint, i.e. antialiased):
    one kernel per distinct image size instead of one resize per image.
    """
    decoded = _decode(jpegs, device)
    keep = torch.tensor([d is not None for d in decoded])
    images = [d for d in decoded if d is not None]
    out = torch.empty(len(images), 3, image_size, image_size, device=device)
    groups = {}
    for i, img in enumerate(images):
        groups.setdefault(tuple(img.shape[1:]), []).append(i)
    for (h, w), idx in groups.items():
        boxes = []
        for j, i in enumerate(idx):
            top, left, ch, cw = _crop_box(h, w, train, scale)
            boxes.append([j, left, top, left + cw, top + ch])
        stack = torch.stack([images[i] for i in idx]).float()  # [n, 3, h, w]
        boxes_t = torch.tensor(boxes, dtype=torch.float32, device=device)
        ratio = max(1, int(round(max(b[3] - b[1] for b in boxes) / image_size)))
        crops = roi_align(stack, boxes_t, output_size=image_size, spatial_scale=1.0, sampling_ratio=max(2, ratio), aligned=True)
        out[torch.tensor(idx, device=device)] = crops
    mean = torch.tensor(OPENAI_MEAN, device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(OPENAI_STD, device=device).view(1, 3, 1, 1) * 255
    return (out - mean) / std, keep
