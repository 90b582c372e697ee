"""Image preprocessing: OpenAI's eval transform and open_clip's train augmentation."""
from __future__ import annotations

from typing import Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

OPENAI_MEAN: Tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD: Tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)


def to_rgb(image):
    return image.convert("RGB")


class RandomResizedCropPixels(T.RandomResizedCrop):
    """torchvision's RandomResizedCrop (the same box from the same random draws) that returns
    uint8 pixels [3, S, S]: PIL crops, torch resizes with its antialiased bicubic filter, which
    is PIL's own filter (PIL's result within one level's rounding but for a few pixels beside
    strong edges, where PIL clips its first pass), four times as fast on a CPU core (1.05 ->
    0.26 ms at 240 -> 224 pixels): the resize was the data workers' largest cost."""

    def forward(self, image):
        top, left, height, width = self.get_params(image, self.scale, self.ratio)
        crop = to_rgb(image.crop((left, top, left + width, top + height)))
        pixels = torch.from_numpy(np.array(crop)).permute(2, 0, 1)  # [3, h, w], channels-last in memory
        resized = F.interpolate(pixels[None], size=tuple(self.size), mode="bicubic", antialias=True)  # uint8 in, uint8 out
        return resized[0].contiguous()


def image_transform(image_size: int, train: bool = False, scale: Tuple[float, float] = (0.9, 1.0),
                    normalize: bool = True) -> T.Compose:
    """PIL image -> normalised float tensor [3, image_size, image_size].

    Eval: bicubic resize of the short side, center crop, RGB, OpenAI mean/std (PIL's, as OpenAI).
    Train: RandomResizedCrop(scale=(0.9, 1.0)) as open_clip's default augmentation, resized by
    torch (RandomResizedCropPixels).
    ``normalize=False`` stops before the float conversion and returns the uint8 pixels
    [3, S, S]; ``normalize_images`` finishes the job later (on the GPU, with a quarter of
    the bytes to move from the data workers).
    """
    if train:
        crop = RandomResizedCropPixels(image_size, scale=scale, interpolation=InterpolationMode.BICUBIC)
        return T.Compose([crop] if not normalize else [crop, _normalize_one])
    geometry = [T.Resize(image_size, interpolation=InterpolationMode.BICUBIC), T.CenterCrop(image_size)]
    if not normalize:
        return T.Compose(geometry + [to_rgb, T.PILToTensor()])
    return T.Compose(geometry + [to_rgb, T.ToTensor(), T.Normalize(OPENAI_MEAN, OPENAI_STD)])


def _normalize_one(image: torch.Tensor) -> torch.Tensor:
    return normalize_images(image[None])[0]


def normalize_images(images: torch.Tensor) -> torch.Tensor:
    """uint8 images [B, 3, S, S] -> what ToTensor + Normalize make of them, with the same
    operations in the same order (bit-identical on the CPU)."""
    mean = torch.tensor(OPENAI_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_STD, device=images.device).view(1, 3, 1, 1)
    return images.to(torch.float32).div(255).sub_(mean).div_(std)
