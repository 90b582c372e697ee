"""make_shards on data as it really comes: Flickr8k's photos and caption files, split lists,
real image formats; and it never destroys shards it did not write."""
import hashlib
import io
import json
import os
import tarfile

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from clipscratch.data.images import open_image
from clipscratch.data.make_shards import main as make_shards
from clipscratch.data.make_shards import Sample, write_shards
from clipscratch.errors import ClipscratchError


def _flickr(shared_data):
    return os.path.join(shared_data, "flickr8k-1000"), os.path.join(shared_data, "flickr8k-captions")


def _samples(pattern_dir, prefix="shard"):
    urls = sorted(os.path.join(pattern_dir, f) for f in os.listdir(pattern_dir) if f.startswith(prefix) and f.endswith(".tar"))
    return list(wds.WebDataset(urls, shardshuffle=False, empty_check=False))


def test_flickr8k_test_split_one_sample_per_photo_with_its_five_captions(shared_data, tmp_path, capsys):
    photos, caps = _flickr(shared_data)
    make_shards(["--captions", os.path.join(caps, "Flickr8k.token.txt"), "--images", os.path.join(photos, "images"),
                 "--only", os.path.join(caps, "Flickr_8k.testImages.txt"), "--split", "test", "--out", str(tmp_path),
                 "--maxcount", "50"])
    out = capsys.readouterr().out
    assert "wrote 125 images in 3 shards" in out and "skipped 875 listed images that are not there" in out
    test_names = {line.strip() for line in open(os.path.join(caps, "Flickr_8k.testImages.txt")) if line.strip()}
    token = {}
    for line in open(os.path.join(caps, "Flickr8k.token.txt")):
        name, caption = line.rstrip("\n").split("\t")
        token.setdefault(name.split("#")[0], []).append(caption.strip())
    samples = _samples(str(tmp_path))
    assert len(samples) == 125
    for s in samples:
        meta = json.loads(s["json"])
        assert meta["source"] in test_names and meta["split"] == "test"
        assert meta["captions"] == token[meta["source"]] and len(meta["captions"]) == 5
        assert s["txt"].decode() == meta["captions"][0]
        original = open(os.path.join(photos, "images", meta["source"]), "rb").read()
        assert s["jpg"] == original  # upright JPEGs travel as they are: no re-encoding, no 5x copies
    total = sum(len(s["jpg"]) for s in samples)
    on_disk = sum(os.path.getsize(os.path.join(tmp_path, f)) for f in os.listdir(tmp_path) if f.endswith(".tar"))
    assert on_disk < 2 * total  # one copy plus tar headers; one sample per caption made 5 copies


def test_kaggle_style_captions_csv_with_images_beside_it(shared_data, tmp_path, capsys):
    photos, caps = _flickr(shared_data)
    make_shards(["--captions", os.path.join(photos, "captions.txt"), "--only", os.path.join(caps, "Flickr_8k.devImages.txt"),
                 "--out", str(tmp_path)])
    assert "wrote 113 images in 1 shards" in capsys.readouterr().out  # images/ found beside captions.txt
    assert all(len(json.loads(s["json"])["captions"]) == 5 for s in _samples(str(tmp_path)))


def _tiny_samples(n, colour=(200, 10, 10)):
    for i in range(n):
        buf = io.BytesIO()
        Image.new("RGB", (16, 16), colour).save(buf, format="JPEG")
        yield Sample(buf.getvalue(), [f"caption {i}"], {})


def test_refuses_to_overwrite_shards_and_overwrites_only_when_asked(tmp_path):
    write_shards(_tiny_samples(5), str(tmp_path), maxcount=2)
    before = {f: hashlib.sha1(open(tmp_path / f, "rb").read()).hexdigest() for f in os.listdir(tmp_path)}
    assert sorted(before) == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar", "shard_info.json"]
    with pytest.raises(ClipscratchError, match="already holds shards.*--overwrite"):
        write_shards(_tiny_samples(1), str(tmp_path), maxcount=2)
    after = {f: hashlib.sha1(open(tmp_path / f, "rb").read()).hexdigest() for f in os.listdir(tmp_path)}
    assert after == before
    write_shards(_tiny_samples(3), str(tmp_path), maxcount=2, prefix="other")  # another prefix is another set
    summary = write_shards(_tiny_samples(1), str(tmp_path), maxcount=2, overwrite=True)
    assert summary["samples"] == 1 and sorted(f for f in os.listdir(tmp_path) if f.startswith("shard")) == [
        "shard-000000.tar", "shard_info.json"]
    assert len([f for f in os.listdir(tmp_path) if f.startswith("other")]) == 3


def test_a_crash_mid_write_leaves_only_complete_shards_under_shard_names(tmp_path):
    def crashing():
        yield from _tiny_samples(3)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_shards(crashing(), str(tmp_path), maxcount=2)
    names = sorted(os.listdir(tmp_path))
    assert "shard-000000.tar" in names and "shard-000001.tar" not in names and "shard_info.json" not in names
    with tarfile.open(tmp_path / "shard-000000.tar") as tar:
        assert len(tar.getnames()) == 6  # 2 complete samples x (jpg, txt, json)


def _exif_rotated_jpeg(path):
    """40x20 landscape pixels, left half red, stored with EXIF orientation 6 (rotate 90 degrees clockwise to view)."""
    image = Image.new("RGB", (40, 20), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 20, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    image.save(path, exif=exif.tobytes(), quality=95)


def _sixteen_bit_png(path):
    values = np.random.default_rng(0).integers(0, 65536, (24, 24)).astype(np.uint16)
    Image.fromarray(values).save(path)
    return values


def test_real_image_formats_read_the_same_in_make_shards_training_and_evaluation(tmp_path):
    from clipscratch.data.pipeline import ShardDataset, StreamSpec, expand_sources, make_loader
    from clipscratch.eval.datasets import imagefolder
    from clipscratch.transforms import image_transform

    folder = tmp_path / "imgs" / "things"
    folder.mkdir(parents=True)
    _exif_rotated_jpeg(folder / "rotated.jpg")
    values = _sixteen_bit_png(folder / "deep.png")
    Image.new("P", (10, 10), 3).save(folder / "palette.png")
    Image.new("RGBA", (10, 10), (10, 200, 30, 128)).save(folder / "alpha.png")
    Image.new("LA", (10, 10), (77, 200)).save(folder / "grey_alpha.png")
    Image.new("CMYK", (10, 10), (0, 255, 255, 0)).save(folder / "cmyk.jpg")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG")

    upright = open_image(str(folder / "rotated.jpg"))
    assert upright.size == (20, 40)  # portrait once the EXIF rotation is applied
    top, bottom = np.asarray(upright)[5, 10], np.asarray(upright)[35, 10]
    assert top[0] > 200 and top[2] < 50 and bottom[2] > 200  # red went to the top (90 degrees clockwise)
    deep = np.asarray(open_image(str(folder / "deep.png")))
    assert deep.shape == (24, 24, 3) and np.abs(deep[..., 0].astype(int) - values / 257).max() <= 0.5 + 1e-9
    for name in ("palette.png", "alpha.png", "grey_alpha.png", "cmyk.jpg"):
        assert open_image(str(folder / name)).mode == "RGB"

    # evaluation opens them identically; make_shards stores them upright and 8-bit
    data = imagefolder(str(tmp_path / "imgs"))
    names = [os.path.basename(p) for p in data.images.paths]
    assert np.array_equal(np.asarray(data.images[names.index("rotated.jpg")]), np.asarray(upright))
    make_shards(["--imagefolder", str(tmp_path / "imgs"), "--out", str(tmp_path / "shards")])
    stored = {json.loads(s["json"])["source"]: s["jpg"] for s in _samples(str(tmp_path / "shards"))}
    assert "things/broken.jpg" not in stored and len(stored) == 6
    assert Image.open(io.BytesIO(stored["things/rotated.jpg"])).size == (20, 40)
    assert np.abs(np.asarray(Image.open(io.BytesIO(stored["things/deep.png"])).convert("L"), int) - values / 257).mean() < 2

    # training decodes the same pixels (eval transform, no augmentation, so the tensors compare)
    spec = StreamSpec(sources=expand_sources(str(tmp_path / "shards" / "shard-000000.tar")), weights=[1.0], batch_size=6, shuffle_buffer=0)
    batch = next(iter(make_loader(ShardDataset(spec, image_transform(16), context_length=77), 0)))
    assert batch["images"].shape == (6, 3, 16, 16) and batch["skipped"] == {}


def test_corrupt_image_is_counted_and_named(tmp_path, capsys):
    folder = tmp_path / "imgs" / "a"
    folder.mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(folder / "good.png")
    (folder / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    make_shards(["--imagefolder", str(tmp_path / "imgs"), "--out", str(tmp_path / "s")])
    out = capsys.readouterr().out
    assert "wrote 1 images" in out and "skipped 1 unreadable images" in out and "bad.png" in out


def test_large_jpegs_decode_in_draft_mode_close_to_full_decoding(shared_data):
    """A 3,000-pixel photo for a 224-pixel crop: PIL's DCT-domain downscaling (1/8 here) gives
    what the full decode gives after the resize, to a few grey levels; the 200-pixel Flickr photos
    stay untouched. (Its speed is measured in bench/, not asserted here.)"""
    from torchvision.transforms import functional as TF

    from clipscratch.data.images import encode_jpeg
    from clipscratch.data.pipeline import draft_side
    from clipscratch.transforms import image_transform

    photo = Image.open(os.path.join(shared_data, "photos", "hubble_deep_field.jpg")).convert("RGB")
    big = encode_jpeg(photo.resize((3000, 2616), Image.BICUBIC))
    side = draft_side(image_transform(224, train=True, scale=(0.9, 1.0)))
    assert side == 273  # 224 / sqrt(3/4 * 0.9)
    full = open_image(big)
    small = open_image(big, min_side=side)
    assert full.size == (3000, 2616) and min(small.size) >= side and small.size[0] == 375  # 1/8 scale
    a = TF.pil_to_tensor(TF.resize(full, 224, interpolation=TF.InterpolationMode.BICUBIC)).float()
    b = TF.pil_to_tensor(TF.resize(small, 224, interpolation=TF.InterpolationMode.BICUBIC)).float()
    assert a.shape == b.shape and (a - b).abs().mean() < 4  # grey levels of 255
    flickr = open(os.path.join(shared_data, "flickr8k-1000", "images", "1000268201_693b08cb0e.jpg"), "rb").read()
    assert open_image(flickr, min_side=side).size == open_image(flickr).size
