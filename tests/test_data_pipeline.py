"""Shard writing and reading; bad samples and shards are skipped and counted."""
import io
import tarfile

import pytest
import torch
from PIL import Image

from clipscratch.data.make_shards import main as make_shards_main
from clipscratch.data.make_shards import synthetic_samples, write_shards
from clipscratch.data.pipeline import ShardDataset, StreamSpec, expand_sources, make_loader
from clipscratch.errors import ClipscratchError
from clipscratch.transforms import image_transform


def _read_all(pattern, batch_size=4, workers=0, **spec_kw):
    spec = StreamSpec(sources=expand_sources(pattern), weights=[1.0], batch_size=batch_size, shuffle_buffer=0, **spec_kw)
    ds = ShardDataset(spec, image_transform(32), context_length=77, trim_text=False)
    return list(make_loader(ds, workers))


def test_make_shards_from_csv_and_read_back(tmp_path, capsys):
    images = tmp_path / "imgs"
    images.mkdir()
    rows = ["image,caption"]
    for i in range(10):
        Image.new("RGB", (40, 30), (i * 20, 0, 0)).save(images / f"{i}.png")
        rows.append(f"{i}.png,caption number {i}")
    (images / "broken.jpg").write_bytes(b"not an image")
    rows.append("broken.jpg,a broken one")
    (tmp_path / "caps.csv").write_text("\n".join(rows))
    make_shards_main(["--captions", str(tmp_path / "caps.csv"), "--images", str(images), "--out", str(tmp_path / "shards"), "--maxcount", "4"])
    out = capsys.readouterr().out
    assert "wrote 10 images in 3 shards" in out and "skipped 1 unreadable" in out
    batches = _read_all(str(tmp_path / "shards" / "shard-{000000..000002}.tar"), batch_size=5)
    assert [b["images"].shape for b in batches] == [(5, 3, 32, 32)] * 2
    captions = sorted(c for b in batches for c in b["captions"])
    assert captions == sorted(f"caption number {i}" for i in range(10))
    assert batches[0]["tokens"].shape == (5, 77)


def test_make_shards_from_imagefolder_with_templates(tmp_path):
    for cls in ("cat", "red_car"):
        (tmp_path / "folder" / cls).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (16, 16)).save(tmp_path / "folder" / cls / f"{i}.jpg")
    make_shards_main(["--imagefolder", str(tmp_path / "folder"), "--templates", "a photo of a {}.", "--out", str(tmp_path / "s")])
    captions = sorted(c for b in _read_all(str(tmp_path / "s" / "shard-000000.tar"), batch_size=6) for c in b["captions"])
    assert captions == ["a photo of a cat."] * 3 + ["a photo of a red car."] * 3


def _tar_member(tar, name, data: bytes):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def test_corrupt_images_missing_captions_and_bad_shards_are_counted(tmp_path):
    write_shards(synthetic_samples(8, 0, False, 32), str(tmp_path), maxcount=8, prefix="good")
    with tarfile.open(tmp_path / "bad-000000.tar", "w") as tar:
        buf = io.BytesIO()
        Image.new("RGB", (8, 8)).save(buf, format="JPEG")
        _tar_member(tar, "a.jpg", b"\xff\xd8 corrupt jpeg bytes")
        _tar_member(tar, "a.txt", b"corrupt image")
        _tar_member(tar, "b.jpg", buf.getvalue())  # no caption
        _tar_member(tar, "c.jpg", buf.getvalue())
        _tar_member(tar, "c.txt", b"fine")
    (tmp_path / "bad-000001.tar").write_bytes(b"this is not a tar file at all" * 50)
    batches = _read_all(f"{tmp_path}/good-000000.tar::{tmp_path}/bad-{{000000..000001}}.tar", batch_size=3)
    skipped = {}
    for b in batches:
        for k, n in b["skipped"].items():
            skipped[k] = skipped.get(k, 0) + n
    delivered = sum(len(b["captions"]) for b in batches)
    assert delivered == 9  # 8 good + "fine"
    assert skipped.get("corrupt image") == 1 and skipped.get("missing caption") == 1
    assert skipped.get("unreadable shard", 0) >= 1


def test_split_by_worker_and_rank_covers_every_sample_once(tmp_path):
    write_shards(synthetic_samples(48, 1, False, 32), str(tmp_path), maxcount=6)
    pattern = str(tmp_path / "shard-{000000..000007}.tar")
    expected = sorted(f"{i:09d}" for i in range(48))
    per_rank = []
    for rank in range(2):
        keys = [k for b in _read_all(pattern, batch_size=2, workers=2, rank=rank, world_size=2) for k in b["keys"]]
        assert len(keys) == len(set(keys))  # no sample twice within a rank
        per_rank.append(set(keys))
    assert not per_rank[0] & per_rank[1]  # nor across ranks
    assert sorted(per_rank[0] | per_rank[1]) == expected  # and none missing


def _indexed_samples(n, captions_per_image=1):
    """Flat-colour JPEGs whose red level names their index: image i is red 6 * i (JPEG keeps a flat colour within 2 levels)."""
    from clipscratch.data.images import encode_jpeg
    from clipscratch.data.make_shards import Sample

    for i in range(n):
        image = Image.new("RGB", (40, 40), (6 * i, 255 - 6 * i, 128))
        yield Sample(encode_jpeg(image), [f"picture number {i} version {v}" for v in range(captions_per_image)], {})


def _index_of(image, normalised=True):
    """Recover i from the mean red level of an image tensor [3, H, W]."""
    from clipscratch.transforms import OPENAI_MEAN, OPENAI_STD

    red = image[0].float().mean().item()
    red = (red * OPENAI_STD[0] + OPENAI_MEAN[0]) * 255 if normalised else red
    return round(red / 6)


@pytest.mark.parametrize("gpu_decode,normalize", [(False, True), (False, False), (True, True)])
def test_every_image_arrives_with_its_own_caption_and_tokens(tmp_path, gpu_decode, normalize):
    """Through shuffling, two workers, several captions per image, (gpu_decode) JPEG bytes
    decoded after batching and (uint8, the trainer's default) crops written straight into their
    batch's rows, each image keeps its own caption, and the tokens are that caption's."""
    import clipscratch
    from clipscratch.data.gpu_decode import gpu_transform, unpack_jpegs

    write_shards(_indexed_samples(40, captions_per_image=3), str(tmp_path), maxcount=10)  # 2 workers x 2 shards x 2 batches
    spec = StreamSpec(sources=expand_sources(str(tmp_path / "shard-{000000..000003}.tar")), weights=[1.0], batch_size=5,
                      shuffle_buffer=12, gpu_decode=gpu_decode, seed=3)
    transform = image_transform(24, train=True, scale=(0.6, 1.0), normalize=normalize)
    seen = []
    for batch in make_loader(ShardDataset(spec, transform, 77), 2):
        if gpu_decode:
            images, keep = gpu_transform(unpack_jpegs(batch["images"], batch["jpeg_ends"]), 24, "cpu", batch["boxes"])
            assert keep.all()
        else:
            images = batch["images"]
        assert torch.equal(batch["tokens"], clipscratch.tokenize(batch["captions"], truncate=True)[:, : batch["tokens"].shape[1]])
        for image, caption in zip(images, batch["captions"]):
            index = _index_of(image, normalised=normalize)
            assert caption.startswith(f"picture number {index} version "), (index, caption)
            seen.append(index)
    assert sorted(seen) == list(range(40)) and seen != sorted(seen)  # all of them, shuffled


def test_one_caption_of_several_is_drawn_per_epoch_the_same_way_every_run(tmp_path):
    write_shards(_indexed_samples(12, captions_per_image=5), str(tmp_path), maxcount=12)

    def captions(epoch):
        spec = StreamSpec(sources=expand_sources(str(tmp_path / "shard-000000.tar")), weights=[1.0], batch_size=12,
                          shuffle_buffer=0, epoch=epoch)
        batch = next(iter(make_loader(ShardDataset(spec, image_transform(16), 77), 0)))
        return batch["captions"]

    first, again, later = captions(0), captions(0), captions(1)
    assert first == again  # seeded: a resumed run draws the same captions
    assert first != later  # a new draw each epoch
    assert len({c.split(" version ")[1] for c in first}) > 1  # not always the first caption
    assert all(a.split(" version ")[0] == b.split(" version ")[0] for a, b in zip(first, later))


def test_resampled_mode_mixes_sources_by_weight(tmp_path):
    write_shards(synthetic_samples(20, 0, False, 32), str(tmp_path / "a"), maxcount=10)
    write_shards(synthetic_samples(20, 1, True, 32), str(tmp_path / "b"), maxcount=10)
    spec = StreamSpec(sources=expand_sources(f"{tmp_path}/a/shard-{{000000..000001}}.tar::{tmp_path}/b/shard-{{000000..000001}}.tar"),
                      weights=[3.0, 1.0], batch_size=10, resampled=True, batches_per_worker=40, shuffle_buffer=0)
    batches = list(make_loader(ShardDataset(spec, image_transform(32), 77), 0))
    assert len(batches) == 40
    from clipscratch.data.synthetic import HELD_OUT

    held = sum(any(f"{c} {s}" in cap for c, s in HELD_OUT) for b in batches for cap in b["captions"])
    assert 0.1 < held / 400 < 0.4  # about a quarter from source b


def test_missing_shards_are_one_clear_error(tmp_path):
    with pytest.raises(ClipscratchError, match="no shard found"):
        expand_sources(str(tmp_path / "nothing-{000..003}.tar"))


def test_uint8_batches_normalised_on_the_device_equal_the_float_pipeline(tmp_path):
    """The trainer's path (uint8 from the workers, normalize_images after the copy) gives the
    same bits as ToTensor + Normalize in the workers, with the same random crops."""
    import torch

    from clipscratch.transforms import normalize_images

    write_shards(synthetic_samples(12, seed=3, held_out=False, image_size=48), str(tmp_path), maxcount=12, prefix="s")
    pattern = str(tmp_path / "s-000000.tar")

    def read(normalize):
        spec = StreamSpec(sources=expand_sources(pattern), weights=[1.0], batch_size=6, shuffle_buffer=0)
        transform = image_transform(32, train=True, scale=(0.5, 1.0), normalize=normalize)
        return list(make_loader(ShardDataset(spec, transform, context_length=77, trim_text=False), 0))

    floats, uint8s = read(True), read(False)
    assert [b["images"].dtype for b in uint8s] == [torch.uint8] * 2
    for f, u in zip(floats, uint8s):
        assert u["images"].shape == f["images"].shape == (6, 3, 32, 32)
        assert torch.equal(normalize_images(u["images"]), f["images"])
        assert torch.equal(u["tokens"], f["tokens"])


def _gpu_decode_and_cpu_batches(pattern, transform, batch_size, seed, epoch):
    """The first batch of the shards read with data.gpu_decode (JPEG bytes and crop boxes) and without."""
    def read(gpu_decode):
        spec = StreamSpec(sources=expand_sources(pattern), weights=[1.0], batch_size=batch_size, shuffle_buffer=0,
                          gpu_decode=gpu_decode, seed=seed, epoch=epoch)
        return list(make_loader(ShardDataset(spec, transform, context_length=77, trim_text=False), 0))[0]

    return read(True), read(False)


def test_gpu_decode_batches_carry_the_crops_the_cpu_path_draws(tmp_path):
    """With data.gpu_decode the workers draw each RandomResizedCrop box from the JPEG header,
    seeded per sample like the CPU path: the same boxes, so (nearly) the same pixels."""
    import io as _io

    from torchvision.transforms import RandomResizedCrop

    from clipscratch.data.gpu_decode import gpu_transform, unpack_jpegs
    from clipscratch.data.pipeline import _seed_sample

    write_shards(synthetic_samples(8, seed=5, held_out=False, image_size=48), str(tmp_path), maxcount=8, prefix="s")
    pattern = str(tmp_path / "s-000000.tar")
    transform = image_transform(32, train=True, scale=(0.3, 1.0))

    jpeg_batch, cpu_batch = _gpu_decode_and_cpu_batches(pattern, transform, 8, seed=7, epoch=2)
    jpegs = unpack_jpegs(jpeg_batch["images"], jpeg_batch["jpeg_ends"])
    assert len(jpegs) == 8 and all(j[:2].tolist() == [0xFF, 0xD8] for j in jpegs) and jpeg_batch["boxes"].shape == (8, 4)
    assert jpeg_batch["captions"] == cpu_batch["captions"]
    import webdataset as wds

    for sample, box in zip(wds.WebDataset(pattern, shardshuffle=False), jpeg_batch["boxes"].tolist()):
        _seed_sample(7, 2, {"key": sample["__key__"]})
        image = Image.open(_io.BytesIO(sample["jpg"])).convert("RGB")
        assert list(RandomResizedCrop.get_params(image, [0.3, 1.0], [3 / 4, 4 / 3])) == box
    assert len(set(map(tuple, jpeg_batch["boxes"].tolist()))) > 1  # really random
    images, keep = gpu_transform(jpegs, 32, "cpu", jpeg_batch["boxes"])
    assert keep.all() and images.shape == cpu_batch["images"].shape
    assert (images - cpu_batch["images"]).abs().mean() < 0.05  # bilinear vs bicubic: 0.007 seen; other images: 1.0


def test_gpu_decode_without_a_random_crop_takes_the_centre(tmp_path):
    from clipscratch.data.gpu_decode import gpu_transform, unpack_jpegs

    write_shards(synthetic_samples(4, seed=6, held_out=False, image_size=48), str(tmp_path), maxcount=4, prefix="s")
    spec = StreamSpec(sources=expand_sources(str(tmp_path / "s-000000.tar")), weights=[1.0], batch_size=4,
                      shuffle_buffer=0, gpu_decode=True)
    batch = list(make_loader(ShardDataset(spec, image_transform(32), context_length=77), 0))[0]
    assert "boxes" not in batch
    images, keep = gpu_transform(unpack_jpegs(batch["images"], batch["jpeg_ends"]), 32, "cpu", batch.get("boxes"))
    spec_cpu = StreamSpec(sources=spec.sources, weights=[1.0], batch_size=4, shuffle_buffer=0)
    reference = list(make_loader(ShardDataset(spec_cpu, image_transform(32), context_length=77), 0))[0]["images"]
    assert keep.all() and (images - reference).abs().mean() < 0.05


def test_gpu_decode_turns_exif_rotated_jpegs_upright_and_crops_them_as_the_cpu_path(tmp_path):
    """Shards written by another tool may hold JPEGs with an EXIF orientation, which nvJPEG
    ignores: the workers re-encode those upright and draw the crop box on the upright image,
    so both paths crop the same pixels."""
    from clipscratch.data.gpu_decode import gpu_transform, unpack_jpegs

    pattern = str(tmp_path / "rotated-000000.tar")
    with tarfile.open(pattern, "w") as tar:
        for i in range(4):
            pixels = Image.new("RGB", (40, 20), (0, 0, 255))
            pixels.paste((255, 0, 0), (0, 0, 20, 20))  # stored landscape, left half red
            exif = Image.Exif()
            exif[0x0112] = 6  # shown rotated 90 degrees clockwise: portrait, top half red
            buf = io.BytesIO()
            pixels.save(buf, format="JPEG", quality=95, exif=exif.tobytes())
            _tar_member(tar, f"{i:04d}.jpg", buf.getvalue())
            _tar_member(tar, f"{i:04d}.txt", f"a red and blue picture {i}".encode())
    transform = image_transform(16, train=True, scale=(0.5, 1.0))

    jpeg_batch, cpu_batch = _gpu_decode_and_cpu_batches(pattern, transform, 4, seed=3, epoch=1)
    from torchvision.io import decode_jpeg

    decoded = [decode_jpeg(j) for j in unpack_jpegs(jpeg_batch["images"], jpeg_batch["jpeg_ends"])]
    assert all(d.shape == (3, 40, 20) for d in decoded)  # upright: portrait
    assert all(d[0, :20].float().mean() > 200 and d[0, 20:].float().mean() < 50 for d in decoded)  # red on top
    top, left, height, width = jpeg_batch["boxes"].unbind(1)
    assert (top + height <= 40).all() and (left + width <= 20).all()  # boxes on the upright image
    images, keep = gpu_transform(unpack_jpegs(jpeg_batch["images"], jpeg_batch["jpeg_ends"]), 16, "cpu",
                                 jpeg_batch["boxes"])
    assert keep.all() and (images - cpu_batch["images"]).abs().mean() < 0.05  # the same crops


@pytest.mark.parametrize("side", [None, 256, 520])  # the photos as they are (200 and 500 px), and rescaled
def test_train_crop_equals_torchvisions_pil_crop_within_rounding(shared_data, side):
    """The train transform's crop (RandomResizedCropPixels: torch's antialiased bicubic) against
    torchvision's RandomResizedCrop with PIL's bicubic, same seeds, on real Flickr8k photos: the
    same box and the same filter, so the pixels differ by rounding (one level) except where PIL
    clips its first pass's overshoot beside strong edges and torch does not: over the photos,
    all but a thousandth of the pixels within 1 level (0.02% seen), and a mean far below one
    level (a wrong filter, box or missing antialiasing gives more than one)."""
    import glob
    import os

    from torchvision import transforms as T
    from torchvision.transforms import InterpolationMode

    ours = image_transform(224, train=True, scale=(0.5, 1.0), normalize=False)
    reference = T.Compose([T.RandomResizedCrop(224, scale=(0.5, 1.0), interpolation=InterpolationMode.BICUBIC),
                           T.PILToTensor()])
    paths = sorted(glob.glob(os.path.join(shared_data, "flickr8k-1000", "images", "*.jpg")))
    large = [p for p in paths if max(Image.open(p).size) == 500][:20]  # the rest are scaled to 200 px
    paths = large + [p for p in paths if p not in large][:20]
    assert len(paths) == 40 and len(large) == 20
    mean_diffs, far = [], []  # per photo: the mean difference, the share of pixels more than one level apart
    for i, path in enumerate(paths):
        image = Image.open(path).convert("RGB")
        if side is not None:
            image = image.resize((side, side * image.height // image.width), Image.BICUBIC)
        torch.manual_seed(i)
        got = ours(image)
        torch.manual_seed(i)
        want = reference(image)
        assert got.dtype == torch.uint8 and got.shape == want.shape == (3, 224, 224)
        diff = (got.int() - want.int()).abs()
        mean_diffs.append(diff.float().mean().item())
        far.append((diff > 1).float().mean().item())
    assert sum(far) / len(far) < 1e-3  # 0.02% seen; 0.11% in the edgiest photo
    assert sum(mean_diffs) / len(mean_diffs) < 0.1  # rounding: 0.003-0.05 seen


@pytest.mark.parametrize("scale", [(0.9, 1.0), (0.08, 1.0), (0.999, 1.0)])
def test_crop_box_is_torchvisions_draw_for_draw(scale):
    """RandomResizedCropPixels.get_params (fewer torch calls a try) against torchvision's on
    square, wide, tall and tiny images: the same box from each seed, and the generator left
    where torchvision leaves it (the next draw equal), also when ten tries fail and the box
    falls back to the centre (scale (0.999, 1) on a 3:1 image: no ratio in [3/4, 4/3] fits)."""
    from torchvision import transforms as T

    from clipscratch.transforms import RandomResizedCropPixels

    ratio = (3 / 4, 4 / 3)
    for height, width in [(256, 256), (375, 500), (500, 333), (96, 288), (288, 96), (1, 1), (7, 3)]:
        image = torch.empty(3, height, width)
        fallbacks = 0
        for seed in range(300):
            torch.manual_seed(seed)
            want, want_next = T.RandomResizedCrop.get_params(image, list(scale), list(ratio)), torch.rand(1)
            torch.manual_seed(seed)
            got, got_next = RandomResizedCropPixels.get_params(image, list(scale), list(ratio)), torch.rand(1)
            assert got == want and torch.equal(got_next, want_next), (height, width, seed)
            fallbacks += got == (RandomResizedCropPixels.get_params(image, [9.0, 9.0], list(ratio)))
        if scale == (0.999, 1.0) and width == 3 * height:
            assert fallbacks == 300  # every seed took the fallback, which matched torchvision's


def test_crops_written_into_batch_rows_equal_the_crops_stacked(tmp_path, shared_data):
    """The uint8 train crop resizes each photo straight into its row of a shared batch
    (pipeline.augment); with a no-op step after it the pipeline crops each sample apart and
    stacks them. Through two workers, on real Flickr8k photos (200-500 px, several shards,
    batches buffered by the loader while later ones are filled): the same bits, channels-last
    [B, 3, S, S]; each row its own (a buffer refilled before its batch was used would differ)."""
    import glob
    import os

    from clipscratch.data.make_shards import Sample

    paths = sorted(glob.glob(os.path.join(shared_data, "flickr8k-1000", "images", "*.jpg")))[:48]
    write_shards((Sample(open(p, "rb").read(), [os.path.basename(p)], {}) for p in paths), str(tmp_path), maxcount=12)

    def read(transform):
        spec = StreamSpec(sources=expand_sources(str(tmp_path / "shard-{000000..000003}.tar")), weights=[1.0], batch_size=4,
                          shuffle_buffer=8, seed=5)
        return list(make_loader(ShardDataset(spec, transform, context_length=77), 2))

    crop = image_transform(64, train=True, scale=(0.3, 1.0), normalize=False)
    written = read(crop)
    stacked = read(lambda image: crop.transforms[0](image))  # a transform that is not the crop alone: per sample
    assert len(written) == len(stacked) == 12
    for w, s in zip(written, stacked):
        assert w["keys"] == s["keys"]
        assert w["images"].shape == (4, 3, 64, 64) and w["images"].is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(w["images"], s["images"])
    rows = torch.cat([b["images"] for b in written]).flatten(1)
    assert len(torch.unique(rows, dim=0)) == 48  # no row repeated or left empty


def test_resize_into_equals_interpolate_and_its_fallback(monkeypatch):
    """transforms.resize_into (the resize's out= variant, no copy) gives F.interpolate's bits on
    uint8 channels-last crops of several sizes, and so does its fallback for a torch without
    that signature."""
    import torch.nn.functional as F

    from clipscratch.transforms import resize_into

    generator = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (1, 300, 260, 3), dtype=torch.uint8, generator=generator).permute(0, 3, 1, 2)
    for top, left, h, w in [(0, 0, 300, 260), (17, 5, 200, 240), (40, 40, 37, 90)]:
        crop = image[:, :, top: top + h, left: left + w]
        want = F.interpolate(crop, size=(96, 96), mode="bicubic", antialias=True)
        out = torch.empty(1, 96, 96, 3, dtype=torch.uint8).permute(0, 3, 1, 2)
        assert resize_into(crop, out) is out and torch.equal(out, want)

    resize = torch._C._nn._upsample_bicubic2d_aa

    def without_out(*args, **kwargs):  # F.interpolate's own call still works
        if "out" in kwargs:
            raise TypeError("no such signature")
        return resize(*args, **kwargs)

    monkeypatch.setattr(torch._C._nn, "_upsample_bicubic2d_aa", without_out)
    out = torch.zeros(1, 96, 96, 3, dtype=torch.uint8).permute(0, 3, 1, 2)
    resize_into(image, out)
    monkeypatch.undo()
    assert torch.equal(out, F.interpolate(image, size=(96, 96), mode="bicubic", antialias=True))
