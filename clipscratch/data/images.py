"""Opening images as they really come, the same way in make_shards, training and evaluation.

* EXIF orientation is applied (a phone photo stored sideways is shown upright);
* 16-bit and 32-bit grey images are scaled to 8 bits (PIL's ``convert("RGB")`` clips them,
  turning 16-bit pictures almost white);
* palette, grey, grey+alpha, RGBA and CMYK images become RGB as OpenAI's preprocessing makes
  them (``convert("RGB")``: alpha is dropped, not composited);
* a file that is not a readable image raises ``UnreadableImage`` naming it, which callers count
  and skip (training, make_shards) or report in one line (evaluation).
"""
from __future__ import annotations

import io
import math
import os
from typing import Optional, Tuple, Union

import numpy as np
import simplejpeg
import torch
from PIL import Image, ImageOps

from ..errors import ClipscratchError
from ..transforms import pixels

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")
_HIGH_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


class UnreadableImage(ClipscratchError):
    """An image file that PIL cannot decode (corrupt, truncated, not an image)."""


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL image -> an 8-bit RGB image, upright (itself when it is one already: no copy)."""
    if exif_rotated(image):
        image = ImageOps.exif_transpose(image)
    if image.mode in _HIGH_DEPTH_MODES:
        image = Image.fromarray(_to_uint8(np.asarray(image), sixteen_bit=image.mode.startswith("I;16")), mode="L")
    return image if image.mode == "RGB" else image.convert("RGB")


def _to_uint8(values: np.ndarray, sixteen_bit: bool) -> np.ndarray:
    """16-bit grey levels -> 0..255 (65535 -> 255); 32-bit integers the same when they exceed
    255 (PIL opens some 16-bit PNGs as mode "I"); floats in [0, 1] -> 0..255."""
    if values.dtype.kind == "f":
        values = values * 255.0 if values.size and np.nanmax(values) <= 1.0 else values
        return np.clip(np.nan_to_num(values), 0, 255).round().astype(np.uint8)
    wide = values.astype(np.int64)
    if sixteen_bit or (wide.size and wide.max() > 255):
        wide = (np.clip(wide, 0, 65535) + 128) // 257
    return np.clip(wide, 0, 255).astype(np.uint8)


def open_image(source: Union[str, bytes, os.PathLike], name: str = "", min_side: int = 0) -> Image.Image:
    """A path or encoded bytes -> RGB PIL image (see the module docstring). ``min_side``: a JPEG
    at least twice that on its short side is decoded at 1/2, 1/4 or 1/8 scale in the DCT domain
    (PIL's draft mode), as small as keeps the short side >= ``min_side``: several times faster
    for large photos."""
    what = name or (str(source) if not isinstance(source, bytes) else "image bytes")
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as im:
            target = _draft_target(*im.size, min_side) if im.format == "JPEG" else None
            if target:
                im.draft("RGB", target)
            im.load()
            return to_rgb(im)
    except FileNotFoundError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise UnreadableImage(f"{what}: cannot read image ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None


def open_pixels(data: bytes, name: str = "", min_side: int = 0) -> torch.Tensor:
    """Encoded bytes -> the RGB pixels ``transforms.pixels(open_image(data, name, min_side))``
    gives, bit for bit, as uint8 [3, H, W] viewing [H, W, 3] (channels-last). JPEGs in YCbCr,
    grey or RGB that need no EXIF rotation are decoded by libjpeg-turbo through simplejpeg
    straight into one array: 2-3.5x as fast as through a PIL image and a copy of its pixels
    (bench/decode_rate.py), at the same DCT-domain scale as open_image's draft mode. Anything
    else (other formats, CMYK, rotated photos, files simplejpeg rejects, huge images) goes
    through open_image."""
    header = _plain_jpeg_header(data)
    if header is not None:
        height, width = header
        target = _draft_target(width, height, min_side)
        scale = _draft_scale(width, height, target) if target else 1
        size = (-(-height // scale), -(-width // scale))  # libjpeg's scaled size, rounded up
        try:
            rgb = simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=size[0], min_width=size[1])
        except ValueError:  # corrupt or unusual: PIL decides (it names what is wrong, or reads it)
            rgb = None
        if rgb is not None and rgb.shape[:2] == size:
            return torch.from_numpy(rgb).permute(2, 0, 1)
    return pixels(open_image(data, name, min_side))[0]


def _plain_jpeg_header(data: bytes) -> Optional[Tuple[int, int]]:
    """(height, width) of a JPEG that open_pixels may decode with simplejpeg, else None."""
    if not is_jpeg(data):
        return None
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:
        return None
    if colorspace not in ("YCbCr", "Gray", "RGB") or height * width > (Image.MAX_IMAGE_PIXELS or float("inf")):
        return None  # CMYK is inverted by PIL; PIL warns about or refuses decompression bombs
    if _has_exif(data) and needs_rotation(data):
        return None
    return height, width


def _has_exif(data: bytes) -> bool:
    """Does the JPEG carry an EXIF segment (APP1 "Exif") before its image data?"""
    i = 2
    while i + 4 <= len(data) and data[i] == 0xFF:
        marker = data[i + 1]
        if marker == 0xDA:  # start of scan: no more headers
            return False
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0xE1 and data[i + 4: i + 10] == b"Exif\x00\x00":
            return True
        i += 2 + int.from_bytes(data[i + 2: i + 4], "big")
    return False


def _draft_target(width: int, height: int, min_side: int) -> Optional[Tuple[int, int]]:
    """The size open_image asks PIL's draft mode for (None: decode at full size)."""
    if not min_side or min(width, height) < 2 * min_side:
        return None
    factor = min_side / min(width, height)
    return math.ceil(width * factor), math.ceil(height * factor)


def _draft_scale(width: int, height: int, target: Tuple[int, int]) -> int:
    """The reduction PIL's JPEG draft picks for ``target``: the largest of 8, 4, 2 and 1 not above
    the size's integer ratio to it."""
    ratio = min(width // target[0], height // target[1])
    return next(s for s in (8, 4, 2, 1) if ratio >= s)


def encode_jpeg(image: Image.Image, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def is_jpeg(data: bytes) -> bool:
    return data[:3] == b"\xff\xd8\xff"


def exif_rotated(im: Image.Image) -> bool:
    """Does this opened image carry an EXIF orientation other than 'upright'? (header only)"""
    return im.getexif().get(0x0112, 1) not in (0, 1)


def needs_rotation(data: bytes) -> bool:
    """Does this encoded image carry an EXIF orientation other than 'upright'?"""
    try:
        with Image.open(io.BytesIO(data)) as im:
            return exif_rotated(im)
    except (OSError, ValueError, SyntaxError):
        return False
