"""The studies: text-text alignment against a frozen copy, WiSE-FT, the one-command finetuning
study on real MNIST digits."""
import json
import os
import sys

import pytest
import torch

import clipscratch
from clipscratch.eval import wise_ft

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import evaluate  # noqa: E402


WORDS = ["crimson=red", "emerald=green", "azure=blue", "amber=yellow", "violet=purple", "tangerine=orange"]


def test_align_text_teaches_new_words_and_leaves_the_frozen_reference_unchanged(shapes_model, tmp_path):
    from clipscratch.eval.align_text import align, parse_words, text_pairs

    model, _ = clipscratch.load(shapes_model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pairs = text_pairs(parse_words(WORDS[:2]), ["it is {}", "so {}"])
    student = align(model, pairs, ["a photo of red shapes"], None, ["text"], steps=5, lr=1e-3,
                    weights={"pairs": 1.0, "anchor": 1.0, "image": 0.0}, batch_size=8, seed=0)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # the frozen copy
    changed = {k for k, v in student.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith("text.") for k in changed)

    res = evaluate.main(["align-text", "--model", shapes_model, "--dataset", "shapes:colour", "--words", *WORDS,
                         "--pairs", "96", "--seeds", "0", "--steps", "150", "--original", "shapes:position",
                         "--wise-ft", "0", "0.5", "1", "--gradcam-images", "2", "--out", str(tmp_path), "--cache-dir", ""])
    after = res["mean_after"][96]
    assert res["before"]["known_words"] > 0.4  # the model knows colour by its usual names
    assert after["new_words"] > res["before"]["new_words"] + 0.15  # and learns the new ones from text alone
    assert abs(after["known_words"] - res["before"]["known_words"]) < 0.1
    assert [r["alpha"] for r in res["wise_ft"]] == [0.0, 0.5, 1.0]
    assert res["wise_ft"][0]["new_words"] == pytest.approx(res["before"]["new_words"])  # alpha 0: the start model
    assert res["wise_ft"][2]["new_words"] == pytest.approx(after["new_words"])  # alpha 1: the aligned model
    for name in ("align_text_pairs.png", "align_text_gradcam.png", "align_text_wise_ft.png"):
        assert (tmp_path / name).stat().st_size > 5000, name
    lines = (tmp_path / "align_text.csv").read_text().splitlines()
    assert len(lines) == 2 and lines[0].startswith("pairs,seed,new_words_before")
    again, _ = clipscratch.load(shapes_model)  # nothing was written over the checkpoint
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in model.state_dict().items())


def test_align_text_refuses_pair_templates_the_evaluation_uses(shapes_model, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        evaluate.main(["align-text", "--model", shapes_model, "--dataset", "shapes:colour", "--words", *WORDS,
                       "--pair-templates", "{} objects", "--out", str(tmp_path)])
    assert exit_.value.code == 2
    assert "must differ from the dataset's prompt templates" in capsys.readouterr().err


def test_wise_ft_alpha_zero_and_one_are_the_two_models_exactly():
    torch.manual_seed(0)
    a, b = clipscratch.create_model("tiny-rn"), clipscratch.create_model("tiny-rn")
    with torch.no_grad():
        b.visual.bn1.running_mean.add_(1.0)
    for alpha, reference in ((0.0, a), (1.0, b)):
        mixed = wise_ft.ensemble(a, b, alpha).state_dict()
        assert all(torch.equal(mixed[k], v) for k, v in reference.state_dict().items()), alpha
    half = wise_ft.ensemble(a, b, 0.5).state_dict()
    k = "visual.conv1.weight"
    assert torch.allclose(half[k], (a.state_dict()[k] + b.state_dict()[k]) / 2)


def test_fewshot_wise_ft_reports_each_alpha(shapes_model, tmp_path):
    res = evaluate.main(["fewshot", "--model", shapes_model, "--dataset", "shapes:shape", "--parts", "text_projection",
                         "--shots", "4", "--seeds", "0", "--epochs", "3", "--lr", "1e-2", "--wise-ft", "0", "1",
                         "--original", "shapes:colour", "--out", str(tmp_path), "--cache-dir", ""])
    rows = res["wise_ft"]["text_projection"]
    assert [r["alpha"] for r in rows] == [0.0, 1.0]
    assert rows[0]["task"] == pytest.approx(res["zeroshot_top1"])  # alpha 0: the start model's zero-shot
    assert rows[1]["task"] == pytest.approx(res["mean_top1"]["text_projection"][4])  # alpha 1: the finetuned one
    assert (tmp_path / "fewshot_wise_ft_text_projection.png").exists()


def test_study_on_real_mnist_digits_in_one_command(shapes_model, tmp_path, shared_data):
    res = evaluate.main(["study", "--model", shapes_model, "--dataset", f"imagefolder:{os.path.join(shared_data, 'mnist-10k')}",
                         "--parts", "text_projection", "image", "--shots", "1", "5", "--tip-shots", "1", "2", "--seeds", "0",
                         "--epochs", "2", "--tip-epochs", "2", "--out", str(tmp_path), "--cache-dir", str(tmp_path / "c")])
    assert (res["train_images"], res["val_images"], res["test_images"]) == (7001, 999, 2000)
    assert set(res["mean_top1"]) == {"finetune text_projection", "finetune image", "Tip-Adapter", "Tip-Adapter-F"}
    assert res["linear_probe"]["top1"] > 0.5  # even a shapes model's features separate real digits linearly
    table = (tmp_path / "study.md").read_text()
    assert "| finetune image |" in table and "linear probe" in table
    rows = json.load(open(tmp_path / "study.json"))
    assert rows["mean_top1"]["Tip-Adapter"]["1"] >= 0
    assert (tmp_path / "study_fewshot.png").exists() and (tmp_path / "study_tip_adapter.png").exists()
