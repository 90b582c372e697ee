"""Every evaluate.py subcommand runs end to end on CPU with a tiny model on the bundled digits."""
import json
import os
import subprocess
import sys

import pytest
import torch

import clipscratch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import evaluate  # noqa: E402


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    clipscratch.save_checkpoint(clipscratch.create_model("tiny-vit"), str(path))
    return str(path)


def _run(method, ckpt, out, *extra, dataset="digits"):
    return evaluate.main([method, "--model", ckpt, "--dataset", dataset, "--out", str(out), "--cache-dir", str(out / "cache"), *extra])


def test_zeroshot_writes_json_csv_and_confusion_png(tiny_checkpoint, tmp_path):
    res = _run("zeroshot", tiny_checkpoint, tmp_path)
    saved = json.load(open(tmp_path / "zeroshot.json"))
    assert saved["top1"] == res["top1"] and 0 <= res["top1"] <= 1
    assert (tmp_path / "zeroshot.csv").exists() and (tmp_path / "zeroshot_confusion.png").exists()
    assert len(os.listdir(tmp_path / "cache")) == 1
    again = _run("zeroshot", tiny_checkpoint, tmp_path)  # served from the feature cache
    assert again["top1"] == res["top1"]


def test_prompt_comparison_lists_each_template(tiny_checkpoint, tmp_path):
    res = _run("zeroshot", tiny_checkpoint, tmp_path, "--compare", "This is a photo of {}", "This is not a photo of {}", "No {}, no score.")
    assert [r["template"] for r in res["comparison"]] == ["This is a photo of {}", "This is not a photo of {}", "No {}, no score."]
    assert (tmp_path / "zeroshot_prompts.png").exists()


def test_linear_probe_fewshot_tip_adapter_run(tiny_checkpoint, tmp_path):
    lp = _run("linear-probe", tiny_checkpoint, tmp_path, "--cs", "0.1", "1")
    assert 0.2 < lp["top1"] <= 1.0  # random features still carry digit information
    fs = _run("fewshot", tiny_checkpoint, tmp_path, "--parts", "text_projection", "visual.proj", "--shots", "1", "2", "--seeds", "0", "--epochs", "2", "--lr", "1e-3")
    assert set(fs["mean_top1"]) == {"text_projection", "visual.proj"}
    assert (tmp_path / "fewshot_shots.png").exists() and (tmp_path / "fewshot.csv").exists()
    tip = _run("tip-adapter", tiny_checkpoint, tmp_path, "--shots", "1", "4", "--seeds", "0", "--epochs", "2", "--val-size", "100")
    assert set(tip["mean_top1"]["Tip-Adapter"]) == {1, 4}
    assert (tmp_path / "tip_adapter_shots.png").exists()


def test_gradcam_retrieval_clipscore_binary_on_shapes(tiny_checkpoint, tmp_path):
    gc = _run("gradcam", tiny_checkpoint, tmp_path, "--images", "2", "--pointing", "20", "--prompts", "a red circle", "a blue square", dataset="shapes:colour")
    assert os.path.exists(gc["grid"]) and 0 <= gc["pointing_game"]["pointing_accuracy"] <= 1
    r = _run("retrieval", tiny_checkpoint, tmp_path, dataset="shapes:colour")
    assert 0 <= r["text_to_image_R@1"] <= r["text_to_image_R@5"] <= r["text_to_image_R@10"] <= 1
    cs = _run("clipscore", tiny_checkpoint, tmp_path, "--show", "2", dataset="shapes:colour")
    assert len(cs["highest"]) == 2 and cs["highest"][0]["clip_score"] >= cs["lowest"][-1]["clip_score"]
    b = _run("binary", tiny_checkpoint, tmp_path, "--labels", "one shape", "several shapes", "--caption-template",
             "this photo says {caption}, it is {label}", "--shots", "4", "--seeds", "0", dataset="shapes:plural")
    assert 0 <= b["zero_shot"]["accuracy"] <= 1 and 4 in b["few_shot"]


def test_every_subcommand_has_help():
    for method in ("zeroshot", "retrieval", "linear-probe", "fewshot", "tip-adapter", "gradcam", "clipscore", "binary"):
        out = subprocess.run([sys.executable, os.path.join(ROOT, "evaluate.py"), method, "--help"], capture_output=True, text=True)
        assert out.returncode == 0 and "--model" in out.stdout


def test_bad_input_is_one_line_error(tmp_path):
    out = subprocess.run([sys.executable, os.path.join(ROOT, "evaluate.py"), "zeroshot", "--model", str(tmp_path / "nope.pt")],
                         capture_output=True, text=True)
    assert out.returncode == 2 and out.stderr.strip().count("\n") == 0 and "nope.pt" in out.stderr


def test_missing_torchvision_dataset_names_the_download_flag(tmp_path):
    from clipscratch.errors import ClipscratchError
    from clipscratch.eval.datasets import from_spec

    with pytest.raises(ClipscratchError, match="--download"):
        from_spec("cifar10", "test", root=str(tmp_path))
