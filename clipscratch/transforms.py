"""Image preprocessing: OpenAI's eval transform and open_clip's train augmentation."""
from __future__ import annotations

import math
import warnings
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torchvision import transforms as T
from torchvision.transforms import functional as TF
from torchvision.transforms import InterpolationMode

OPENAI_MEAN: Tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD: Tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)


def to_rgb(image):
    return image if image.mode == "RGB" else image.convert("RGB")


class RandomResizedCropPixels(T.RandomResizedCrop):
    """torchvision's RandomResizedCrop (the same box from the same random draws) that returns
    uint8 pixels [3, S, S]: torch resizes with its antialiased bicubic filter, which is PIL's
    own filter (PIL's result within one level's rounding but for a few pixels beside strong
    edges, where PIL clips its first pass), on a view of the image's one copy of its pixels:
    six times as fast as PIL on a CPU core (the resize was the data workers' largest cost)."""

    @staticmethod
    def get_params(image, scale, ratio) -> Tuple[int, int, int, int]:
        """torchvision's get_params, draw for draw (the same random numbers in the same order,
        the same float32 arithmetic) with half the torch calls a try: square images need
        four to five tries at open_clip's scale (0.9, 1)."""
        _, height, width = TF.get_dimensions(image)
        area = height * width
        log_ratio = torch.log(torch.tensor(ratio)).tolist()
        draw = torch.empty(1)
        for _ in range(10):
            target_area = area * draw.uniform_(scale[0], scale[1]).item()
            aspect_ratio = draw.uniform_(log_ratio[0], log_ratio[1]).exp_().item()
            w = int(round(math.sqrt(target_area * aspect_ratio)))
            h = int(round(math.sqrt(target_area / aspect_ratio)))
            if 0 < w <= width and 0 < h <= height:
                top = torch.randint(0, height - h + 1, size=(1,)).item()
                left = torch.randint(0, width - w + 1, size=(1,)).item()
                return top, left, h, w
        return _central_crop(height, width, ratio)

    def forward(self, image, out: Optional[torch.Tensor] = None) -> torch.Tensor:
        """PIL image or decoded pixels (see ``pixels``) -> uint8 [3, S, S] (channels-last in memory). ``out``: a uint8 [1, 3, S, S]
        channels-last tensor (a row of a batch) that the resize writes into; its [0] is returned."""
        top, left, height, width = self.get_params(image, self.scale, self.ratio)
        crop = pixels(image)[:, :, top: top + height, left: left + width]  # [1, 3, h, w], a view
        if out is None:
            return F.interpolate(crop, size=tuple(self.size), mode="bicubic", antialias=True)[0]  # uint8 in, uint8 out
        return resize_into(crop, out)[0]


def resize_into(images: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """F.interpolate(images, out's size, bicubic, antialias) written into ``out`` [N, C, S, S]
    through the resize's own out= variant (the op F.interpolate calls; no copy of the result)."""
    try:
        return torch._C._nn._upsample_bicubic2d_aa(images, tuple(out.shape[-2:]), False, None, None, out=out)
    except (AttributeError, TypeError):  # a torch without that signature: resize, then copy
        return out.copy_(F.interpolate(images, size=tuple(out.shape[-2:]), mode="bicubic", antialias=True))


def _central_crop(height: int, width: int, ratio) -> Tuple[int, int, int, int]:
    """torchvision's fallback after ten failed tries: the largest centred box within the ratios."""
    if width / height < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif width / height > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def pixels(image) -> torch.Tensor:
    """A PIL image, or pixels already decoded (data.images.open_pixels: uint8 [3, H, W] viewing
    [H, W, 3]) -> RGB pixels uint8 [1, 3, H, W] channels-last, viewing one copy of them (made
    4-D from [H, W, 3]: the resize's fast uint8 path needs channels-last strides that an
    unsqueeze of [3, H, W] would not give)."""
    if isinstance(image, torch.Tensor):
        return image.permute(1, 2, 0).unsqueeze(0).permute(0, 3, 1, 2)
    rgb = to_rgb(image)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a read-only buffer: nothing writes to it
        flat = torch.frombuffer(rgb.tobytes(), dtype=torch.uint8)
    return flat.view(1, rgb.height, rgb.width, 3).permute(0, 3, 1, 2)


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
