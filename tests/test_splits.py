"""Every evaluation source splits into disjoint, deterministic, stratified train / val / test
parts, grouped by image; fitting methods refuse sources that cannot be split honestly."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from clipscratch.data.make_shards import main as make_shards
from clipscratch.errors import ClipscratchError
from clipscratch.eval.datasets import from_spec, pixel_sha1
from clipscratch.eval.splits import Splits

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _parts(spec):
    splits = Splits(from_spec(spec))
    return splits, {name: splits[name] for name in ("train", "val", "test")}


def _assert_disjoint(parts):
    """No image in two parts: by path where there are files, and by decoded pixels always."""
    paths = {n: set(getattr(p.images, "paths", [])) for n, p in parts.items()}
    pixels = {n: {pixel_sha1(p.images[i]) for i in range(len(p))} for n, p in parts.items()}
    for a, b in (("train", "test"), ("train", "val"), ("val", "test")):
        assert not paths[a] & paths[b], (a, b)
        assert not pixels[a] & pixels[b], (a, b)


def _flickr_shards(shared_data, out, *extra):
    photos = os.path.join(shared_data, "flickr8k-1000")
    make_shards(["--captions", os.path.join(photos, "captions.txt"), "--out", str(out), "--maxcount", "300", *extra])
    return f"wds:{out}/shard-{{000000..000003}}.tar"


def _sources(shared_data, tmp_path):
    mnist = os.path.join(shared_data, "mnist-10k")
    return {
        "digits": "digits",
        "shapes": "shapes:shape",
        "imagefolder (real MNIST)": f"imagefolder:{mnist}",
        "table (real Flickr8k, 5 captions per photo)": f"table:{os.path.join(shared_data, 'flickr8k-1000', 'captions.txt')}",
        "wds (real Flickr8k shards)": _flickr_shards(shared_data, tmp_path / "wds"),
    }


def test_every_source_splits_disjoint_stratified_and_stable(shared_data, tmp_path):
    for what, spec in _sources(shared_data, tmp_path).items():
        splits, parts = _parts(spec)
        sizes = {n: len(p) for n, p in parts.items()}
        assert all(sizes.values()), (what, sizes)
        _assert_disjoint(parts)
        total = len(splits.data)
        assert sum(sizes.values()) == total, what
        again = Splits(from_spec(spec))
        for name, part in parts.items():  # the same split when computed afresh
            assert again[name].keys == part.keys, (what, name)
        if splits.data.declared_splits is None:  # seeded: 20% test, 10% val of every class
            assert abs(sizes["test"] - 0.2 * total) <= 0.01 * total + 10, (what, sizes)
            if splits.data.labels is not None:
                for c in splits.data.labels.unique():
                    n = int((splits.data.labels == c).sum())
                    in_test = int((parts["test"].labels == c).sum())
                    assert abs(in_test - 0.2 * n) <= 1, (what, int(c), in_test, n)


def test_captions_of_one_photo_stay_together(shared_data, tmp_path):
    """Flickr8k as one row per caption: each photo with all its captions on one side."""
    _, parts = _parts(f"table:{os.path.join(shared_data, 'flickr8k-1000', 'captions.txt')}")
    assert sum(len(p) for p in parts.values()) == 1000
    for part in parts.values():
        assert all(len(c) == 5 for c in part.captions)
    names = {n: {os.path.basename(p) for p in part.images.paths} for n, part in parts.items()}
    assert not names["train"] & names["test"]


def test_the_split_is_the_same_in_a_fresh_process_with_files_listed_in_another_order(shared_data, tmp_path):
    """Seeded by image content: copying the images under other names, in another order, and
    splitting in another interpreter (another hash seed) assigns every image to the same part."""
    src = os.path.join(shared_data, "mnist-10k")
    copy = tmp_path / "renamed"
    for digit in ("3", "8"):
        (copy / digit).mkdir(parents=True)
        for i, name in enumerate(sorted(os.listdir(os.path.join(src, digit)), reverse=True)[:200]):
            shutil.copy(os.path.join(src, digit, name), copy / digit / f"z{i:04d}_{name}")
    code = ("import json,sys; sys.path.insert(0, %r); from clipscratch.eval.datasets import from_spec; "
            "from clipscratch.eval.splits import Splits; s = Splits(from_spec(%r)); "
            "print(json.dumps({n: sorted(s[n].keys) for n in ('train', 'val', 'test')}))") % (ROOT, f"imagefolder:{copy}")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": "123"})
    theirs = json.loads(out.stdout)
    ours = Splits(from_spec(f"imagefolder:{copy}"))
    assert {n: sorted(ours[n].keys) for n in ("train", "val", "test")} == theirs


def test_declared_splits_are_kept_and_validation_is_carved_from_train(tmp_path):
    for split, n in (("train", 16), ("test", 6)):
        for label in ("cat", "dog"):
            folder = tmp_path / "data" / split / label
            folder.mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (8, 8), (i * 9 + (split == "test") * 3, 40 * (label == "dog"), 7)).save(folder / f"{i}.png")
    splits, parts = _parts(f"imagefolder:{tmp_path / 'data'}")
    assert [len(parts[n]) for n in ("train", "val", "test")] == [28, 4, 12]  # 1/8 of each class's train is validation
    assert all("/test/" in p for p in parts["test"].images.paths) and not any("/test/" in p for p in parts["val"].images.paths)
    assert splits.data.classnames == ["cat", "dog"]
    _assert_disjoint(parts)
    splits.check_fit("linear-probe", needs_val=True)


def test_fitting_refuses_an_image_in_both_train_and_test(tmp_path):
    for split in ("train", "test"):
        (tmp_path / split / "a").mkdir(parents=True)
    Image.new("RGB", (8, 8), (1, 2, 3)).save(tmp_path / "train" / "a" / "x.png")
    Image.new("RGB", (8, 8), (9, 9, 9)).save(tmp_path / "train" / "a" / "y.png")
    shutil.copy(tmp_path / "train" / "a" / "x.png", tmp_path / "test" / "a" / "copy_of_x.png")
    splits = Splits(from_spec(f"imagefolder:{tmp_path}"))
    assert len(splits["test"]) == 1  # scoring alone is allowed
    with pytest.raises(ClipscratchError, match="same image in its train and test parts"):
        splits.check_fit("linear-probe")


def test_fitting_refuses_a_source_that_is_all_test(shared_data, tmp_path):
    photos, caps = os.path.join(shared_data, "flickr8k-1000"), os.path.join(shared_data, "flickr8k-captions")
    spec = _flickr_shards(shared_data, tmp_path / "t", "--only", os.path.join(caps, "Flickr_8k.testImages.txt"), "--split", "test")
    splits = Splits(from_spec(spec))
    assert len(splits["test"]) == 125 and all(len(c) == 5 for c in splits["test"].captions)
    with pytest.raises(ClipscratchError, match="the train part of .* is empty"):
        splits.check_fit("fewshot")


def test_torchvision_official_splits_and_seeded_eurosat(tmp_path):
    from test_torchvision_adapters import EUROSAT, _write_idx

    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", 40), ("t10k", 7)):
        _write_idx(raw / f"{split}-images-idx3-ubyte", rng.integers(0, 255, (n, 28, 28)))
        _write_idx(raw / f"{split}-labels-idx1-ubyte", np.arange(n) % 10)
    splits = Splits(from_spec("mnist", root=str(tmp_path)))
    assert [len(splits[n]) for n in ("train", "val", "test")] == [30, 10, 7]  # official test; val from official train
    _assert_disjoint({n: splits[n] for n in ("train", "val", "test")})
    for i, name in enumerate(EUROSAT):
        folder = tmp_path / "eurosat" / "2750" / name
        folder.mkdir(parents=True)
        for j in range(10):
            Image.new("RGB", (64, 64), (i * 20, j * 20, 5)).save(folder / f"{name}_{j}.jpg")
    splits = Splits(from_spec("eurosat", root=str(tmp_path)))
    assert [len(splits[n]) for n in ("train", "val", "test")] == [70, 10, 20]
    assert torch.equal(splits["test"].labels.bincount(), torch.full((10,), 2))
    _assert_disjoint({n: splits[n] for n in ("train", "val", "test")})
