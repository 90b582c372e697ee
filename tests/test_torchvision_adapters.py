"""torchvision dataset adapters read a local root (fake MNIST and EuroSAT files here, no download)."""
import struct

import numpy as np
import torch
from PIL import Image

from clipscratch.eval.datasets import from_spec
from clipscratch.eval.splits import Splits

EUROSAT = ["AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial", "Pasture", "PermanentCrop",
           "Residential", "River", "SeaLake"]


def _write_idx(path, array: np.ndarray):
    with open(path, "wb") as f:
        f.write(struct.pack(">I", 0x0800 | array.ndim))
        f.write(struct.pack(f">{array.ndim}I", *array.shape))
        f.write(array.astype(np.uint8).tobytes())


def test_mnist_adapter_reads_the_local_files_with_openai_prompts(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("t10k", 7)):
        _write_idx(raw / f"{split}-images-idx3-ubyte", rng.integers(0, 255, (n, 28, 28)))
        _write_idx(raw / f"{split}-labels-idx1-ubyte", np.arange(n) % 10)
    splits = Splits(from_spec("mnist", root=str(tmp_path)))
    data = splits["test"]
    assert len(data) == 7 and data.labels.tolist() == list(range(7))
    assert data.classnames == [str(i) for i in range(10)]
    assert data.templates == ['a photo of the number: "{}".']
    assert data.images[3].mode == "RGB" and data.images[3].size == (28, 28)
    assert len(splits["train"]) + len(splits["val"]) == 12


def test_eurosat_adapter_maps_folders_to_openai_class_names(tmp_path):
    for i, name in enumerate(EUROSAT):
        folder = tmp_path / "eurosat" / "2750" / name
        folder.mkdir(parents=True)
        Image.new("RGB", (64, 64), (i * 20, 0, 0)).save(folder / f"{name}_1.jpg")
    data = from_spec("eurosat", root=str(tmp_path))
    assert len(data) == 10 and torch.equal(data.labels, torch.arange(10))
    assert data.classnames[0] == "annual crop land" and data.classnames[-1] == "lake or sea"
    assert all("{}" in t for t in data.templates)
