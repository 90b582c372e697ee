"""Image preprocessing: OpenAI's eval transform and open_clip's train augmentation."""
from __future__ import annotations

from typing import Tuple

from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

OPENAI_MEAN: Tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD: Tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)


def to_rgb(image):
    return image.convert("RGB")


def image_transform(image_size: int, train: bool = False, scale: Tuple[float, float] = (0.9, 1.0)) -> T.Compose:
    """PIL image -> normalised float tensor [3, image_size, image_size].

    Eval: bicubic resize of the short side, center crop, RGB, OpenAI mean/std.
    Train: RandomResizedCrop(scale=(0.9, 1.0)) as open_clip's default augmentation.
    """
    if train:
        geometry = [T.RandomResizedCrop(image_size, scale=scale, interpolation=InterpolationMode.BICUBIC)]
    else:
        geometry = [T.Resize(image_size, interpolation=InterpolationMode.BICUBIC), T.CenterCrop(image_size)]
    return T.Compose(geometry + [to_rgb, T.ToTensor(), T.Normalize(OPENAI_MEAN, OPENAI_STD)])
