"""data.images.open_pixels: the train path's JPEG decode straight to pixels (simplejpeg) gives
what PIL gives, bit for bit, on real photos, at draft scales, and hands everything else to PIL."""
import glob
import io
import os

import pytest
import torch
from PIL import Image

import clipscratch.data.images as images
from clipscratch.data.images import UnreadableImage, open_image, open_pixels
from clipscratch.transforms import pixels


def _through_pil(data, min_side=0):
    return pixels(open_image(data, min_side=min_side))[0]


def _jpeg(image, **save_options):
    buf = io.BytesIO()
    image.save(buf, format="JPEG", **save_options)
    return buf.getvalue()


def _pil_forbidden(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("open_pixels went through PIL")

    monkeypatch.setattr(images, "open_image", fail)


def _assert_same(got, want):
    assert got.dtype == torch.uint8 and got.shape == want.shape
    assert got.permute(1, 2, 0).is_contiguous()  # [3, H, W] viewing [H, W, 3], as pixels() views PIL's copy
    assert torch.equal(got, want)


def test_real_photos_decode_to_the_pixels_pil_gives(shared_data, monkeypatch):
    """All 1,000 Flickr8k photos and the shared JPEG photos, plus progressive, grey,
    EXIF-carrying (upright), unsubsampled and RGB-stored re-encodings of them: the same bits as
    PIL's decode, and PIL not called."""
    paths = sorted(glob.glob(os.path.join(shared_data, "flickr8k-1000", "images", "*.jpg")))
    paths += sorted(glob.glob(os.path.join(shared_data, "photos", "*.jpg")))
    assert len(paths) > 1000
    photo = Image.open(paths[0]).convert("RGB")
    upright_exif = Image.Exif()
    upright_exif[0x0112] = 1
    upright_exif[0x010F] = "a camera"
    made = [_jpeg(photo, progressive=True, quality=90), _jpeg(photo.convert("L")),
            _jpeg(photo, exif=upright_exif.tobytes()), _jpeg(photo, subsampling=0), _jpeg(photo, keep_rgb=True)]
    assert images.simplejpeg.decode_jpeg_header(made[-1])[2] == "RGB"  # stored as RGB, not YCbCr
    data = [open(p, "rb").read() for p in paths] + made
    want = [_through_pil(d) for d in data]
    _pil_forbidden(monkeypatch)
    for d, w in zip(data, want):
        _assert_same(open_pixels(d), w)


@pytest.mark.parametrize("min_side", [60, 110, 180])
def test_draft_scales_are_pils(shared_data, monkeypatch, min_side):
    """Photos at least twice ``min_side`` decode at PIL draft mode's DCT scale (1/8, 1/4, 1/2
    here) and to its pixels; smaller ones at full size."""
    paths = sorted(glob.glob(os.path.join(shared_data, "flickr8k-1000", "images", "*.jpg")))
    large = [p for p in paths if max(Image.open(p).size) == 500][:10]
    photo = Image.open(os.path.join(shared_data, "photos", "hubble_deep_field.jpg")).convert("RGB")
    data = [open(p, "rb").read() for p in large] + [_jpeg(photo.resize((1000, 872), Image.BICUBIC))]
    want = [_through_pil(d, min_side) for d in data]
    assert {max(w.shape) for w in want} != {max(Image.open(io.BytesIO(d)).size) for d in data}  # draft mode did reduce
    _pil_forbidden(monkeypatch)
    for d, w in zip(data, want):
        _assert_same(open_pixels(d, min_side=min_side), w)


def test_everything_else_goes_through_pil(shared_data, monkeypatch):
    """An EXIF-rotated JPEG (turned upright), CMYK, PNG (simplejpeg not called), a truncated
    JPEG (simplejpeg refuses it): PIL's pixels or PIL's UnreadableImage; a broken file too."""
    photo = Image.open(os.path.join(shared_data, "flickr8k-1000", "images", "1000268201_693b08cb0e.jpg")).convert("RGB")
    rotated = Image.Exif()
    rotated[0x0112] = 6
    png = io.BytesIO()
    photo.save(png, format="PNG")
    full = _jpeg(photo)
    cases = [_jpeg(photo, exif=rotated.tobytes()), _jpeg(photo.convert("CMYK")), png.getvalue(), full[: len(full) // 2]]
    decoded = []
    decode = images.simplejpeg.decode_jpeg
    monkeypatch.setattr(images.simplejpeg, "decode_jpeg", lambda data, **kw: decoded.append(len(data)) or decode(data, **kw))
    for data in cases:
        try:
            want = _through_pil(data)
        except UnreadableImage as e:
            with pytest.raises(UnreadableImage, match=str(e).split("(")[0].strip()):
                open_pixels(data)
            continue
        _assert_same(open_pixels(data), want)
    assert decoded == [len(cases[3])]
    upright = open_pixels(cases[0])
    assert upright.shape[1:] == photo.size  # width and height swapped: the rotation applied
    with pytest.raises(UnreadableImage, match="cannot read image"):
        open_pixels(b"\xff\xd8\xff\xe0 this is not really a JPEG")
