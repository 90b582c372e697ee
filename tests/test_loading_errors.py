"""Bad checkpoints fail with one clear error; nothing in a file is ever executed."""
import os
import pickle
import urllib.error
import urllib.request

import pytest
import torch

import clipscratch
from clipscratch.errors import ClipscratchError
from clipscratch.loading import export


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > {}".format(os.environ.get("EVIL_MARKER", "/tmp/clipscratch_pwned")),))


def test_malicious_pickle_is_refused_and_not_run(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    monkeypatch.setenv("EVIL_MARKER", str(marker))
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": _Evil()}, f)
    with pytest.raises(ClipscratchError, match="refusing to load"):
        clipscratch.load(str(path))
    assert not marker.exists()


def test_wrong_shape_names_the_mismatching_keys(tmp_path):
    export(clipscratch.create_model("tiny-vit"), str(tmp_path / "m.pt"), "open_clip")
    with pytest.raises(ClipscratchError, match=r"shape mismatch: .*positional_embedding"):
        clipscratch.load(str(tmp_path / "m.pt"), model=clipscratch.create_model("tiny-vit", embed_dim=32, vision={"image_size": 64}).config)


def test_missing_file_is_one_clear_error():
    with pytest.raises(ClipscratchError, match="no such file"):
        clipscratch.load("/nonexistent/model.pt")


def test_corrupt_file_is_one_clear_error(tmp_path):
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(ClipscratchError, match="bad.pt"):
        clipscratch.load(str(tmp_path / "bad.pt"))
    (tmp_path / "bad.safetensors").write_bytes(b"\x00\x01garbage")
    with pytest.raises(ClipscratchError, match="safetensors"):
        clipscratch.load(str(tmp_path / "bad.safetensors"))


def test_offline_download_names_the_local_file_alternative(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(ClipscratchError) as err:
        clipscratch.load("ViT-B/32", cache_dir=str(tmp_path))
    message = str(err.value)
    assert "ViT-B-32.pt" in message and "local path" in message and "\n" not in message


def test_own_checkpoint_round_trip(tmp_path):
    model = clipscratch.create_model("tiny-rn")
    clipscratch.save_checkpoint(model, str(tmp_path / "ckpt"))
    back, preprocess = clipscratch.load(str(tmp_path / "ckpt"))
    assert back.config == model.config
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), back.state_dict().values()))
    assert preprocess.transforms[1].size == (64, 64)


def test_summary_cli_prints_parameters_and_gflops(capsys):
    from clipscratch.models.summary import main

    main(["ViT-B/32"])
    out = capsys.readouterr().out
    assert "87,849,216" in out  # image tower parameters of ViT-B/32
    assert "GFLOPs" in out and "text" in out


def test_a_text_file_or_an_image_is_named_for_what_it_is(tmp_path, shared_data):
    notes = tmp_path / "notes.txt"
    notes.write_text("these are not weights\n")
    with pytest.raises(ClipscratchError, match="notes.txt is a text file, not a model checkpoint"):
        clipscratch.load(str(notes))
    photo = os.path.join(shared_data, "photos", "chelsea.png")
    with pytest.raises(ClipscratchError, match=r"chelsea.png is an image \(PNG, 451x300\), not a model checkpoint"):
        clipscratch.load(photo)


def test_an_unknown_architecture_names_the_known_ones(tmp_path):
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    model = clipscratch.create_model("tiny-vit")
    export(model, str(tmp_path / "oc.pt"), "open_clip")
    out = subprocess.run([sys.executable, os.path.join(root, "evaluate.py"), "zeroshot", "--model", str(tmp_path / "oc.pt"),
                          "--arch", "NoSuchArch"], capture_output=True, text=True)
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    assert "unknown model 'NoSuchArch'; known models:" in out.stderr and "ViT-B-32" in out.stderr
