"""Every evaluate.py method end to end on the CPU with a tiny model: what each writes equals an
independent computation from the same features, on the parts of the split it names."""
import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import clipscratch
from clipscratch.eval.datasets import from_spec
from clipscratch.eval.features import FeatureExtractor
from clipscratch.eval.linear_probe import linear_probe
from clipscratch.eval.metrics import classify, confusion_matrix, retrieval_recall, topk_accuracy
from clipscratch.eval.splits import Splits
from clipscratch.eval.tip_adapter import build_cache, tip_logits
from clipscratch.data.images import open_image
from clipscratch.eval.zeroshot import zeroshot_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import evaluate  # noqa: E402


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    clipscratch.save_checkpoint(clipscratch.create_model("tiny-vit"), str(path))
    return str(path)


@pytest.fixture(scope="module")
def reference(tiny_checkpoint):
    """Features computed here, without the suite or its cache."""
    model, preprocess = clipscratch.load(tiny_checkpoint)
    ex = FeatureExtractor(model, preprocess, progress=False)

    def parts(spec):
        splits = Splits(from_spec(spec))
        return {name: splits[name] for name in ("train", "val", "test")}

    return model, ex, parts


def _run(method, ckpt, out, *extra, dataset="digits"):
    return evaluate.main([method, "--model", ckpt, "--dataset", dataset, "--out", str(out), "--cache-dir", str(out / "cache"), *extra])


def _csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_zeroshot_equals_the_features_computed_directly(tiny_checkpoint, reference, tmp_path):
    _, ex, parts = reference
    test = parts("digits")["test"]
    res = _run("zeroshot", tiny_checkpoint, tmp_path)
    feats, classifier = ex.image_features(test), ex.classifier(test.classnames, test.templates)
    expected = zeroshot_metrics(feats, test.labels, classifier)
    assert res["top1"] == pytest.approx(expected["top1"], abs=1e-9) and res["top5"] == pytest.approx(expected["top5"], abs=1e-9)
    assert res["test_images"] == len(test) == 359
    matrix = np.array(res["confusion_matrix"])
    assert matrix.sum() == len(test) and np.trace(matrix) / len(test) == pytest.approx(res["top1"])
    assert torch.equal(torch.tensor(matrix), confusion_matrix(classify(feats, classifier), test.labels, 10))
    saved = json.load(open(tmp_path / "zeroshot.json"))
    assert saved["top1"] == res["top1"] and float(_csv(tmp_path / "zeroshot.csv")[0]["top1"]) == pytest.approx(res["top1"])
    assert (tmp_path / "zeroshot_confusion.png").stat().st_size > 1000
    assert len(os.listdir(tmp_path / "cache")) == 1
    assert _run("zeroshot", tiny_checkpoint, tmp_path)["top1"] == res["top1"]  # served from the feature cache


def test_prompt_comparison_scores_each_template_alone(tiny_checkpoint, reference, tmp_path):
    _, ex, parts = reference
    test = parts("digits")["test"]
    templates = ["This is a photo of {}", "This is not a photo of {}", "No {}, no score."]
    res = _run("zeroshot", tiny_checkpoint, tmp_path, "--compare", *templates)
    feats = ex.image_features(test)
    assert [r["template"] for r in res["comparison"]] == templates
    for row in res["comparison"]:
        expected = topk_accuracy(classify(feats, ex.classifier(test.classnames, [row["template"]])), test.labels)
        assert row["top1"] == pytest.approx(expected)
    assert (tmp_path / "zeroshot_prompts.png").exists()


def test_linear_probe_fits_on_train_and_val_and_scores_test(tiny_checkpoint, reference, tmp_path):
    _, ex, parts = reference
    p = parts("digits")
    res = _run("linear-probe", tiny_checkpoint, tmp_path, "--cs", "0.1", "1", "10")
    f = ex.image_features
    expected = linear_probe(f(p["train"]), p["train"].labels, f(p["val"]), p["val"].labels, f(p["test"]), p["test"].labels, [0.1, 1, 10])
    assert res["top1"] == expected["top1"] and res["C"] == expected["C"]
    assert res["top1"] > 0.5  # random features still carry the digits' shape
    assert (res["train_images"], res["val_images"], res["test_images"]) == tuple(len(p[n]) for n in ("train", "val", "test"))


def test_fewshot_rows_and_means(tiny_checkpoint, tmp_path):
    parts_, shots, seeds = ["text_projection", "visual.proj"], [1, 2], [0, 1]
    res = _run("fewshot", tiny_checkpoint, tmp_path, "--parts", *parts_, "--shots", *map(str, shots), "--seeds", *map(str, seeds),
               "--epochs", "2", "--lr", "1e-3")
    rows = _csv(tmp_path / "fewshot.csv")
    assert sorted((r["part"], int(r["shots"]), int(r["seed"])) for r in rows) == sorted(
        (p, k, s) for p in parts_ for k in shots for s in seeds)
    for p in parts_:
        for k in shots:
            mean = np.mean([float(r["top1"]) for r in rows if r["part"] == p and int(r["shots"]) == k])
            assert res["mean_top1"][p][k] == pytest.approx(mean)
    assert res["train_images"] == 1259 and res["test_images"] == 359
    assert (tmp_path / "fewshot_shots.png").exists()


def test_tip_adapter_rows_follow_the_formula_with_their_alpha_and_beta(tiny_checkpoint, reference, tmp_path):
    from clipscratch.eval.datasets import few_shot_indices

    _, ex, parts = reference
    p = parts("digits")
    res = _run("tip-adapter", tiny_checkpoint, tmp_path, "--shots", "1", "4", "--seeds", "0", "--epochs", "2")
    rows = _csv(tmp_path / "tip_adapter.csv")
    assert len(rows) == 4 and set(res["mean_top1"]["Tip-Adapter"]) == {1, 4}
    train_feats, test_feats = ex.image_features(p["train"]), ex.image_features(p["test"])
    classifier = ex.classifier(p["test"].classnames, p["test"].templates)
    for row in (r for r in rows if r["method"] == "Tip-Adapter"):
        idx = few_shot_indices(p["train"].labels, int(row["shots"]), int(row["seed"]))
        keys, values = build_cache(train_feats[idx], p["train"].labels[idx], 10)
        logits = tip_logits(test_feats, classifier, keys, values, float(row["alpha"]), float(row["beta"]))
        assert float(row["top1"]) == pytest.approx(topk_accuracy(logits, p["test"].labels))
    assert res["val_images"] == len(p["val"]) and (tmp_path / "tip_adapter_shots.png").exists()


def test_gradcam_saves_the_maps_of_each_prompt(tiny_checkpoint, reference, tmp_path):
    from test_eval_behaviour import _direct_gradcam

    model, ex, parts = reference
    test = parts("shapes:colour")["test"]
    prompts = ["a red circle", "a blue square"]
    res = _run("gradcam", tiny_checkpoint, tmp_path, "--images", "2", "--pointing", "20", "--prompts", *prompts, dataset="shapes:colour")
    saved = np.load(res["maps"])
    assert list(saved["prompts"]) == prompts and saved["maps"].shape == (2, 2, 32, 32)
    images = torch.stack([clipscratch.image_transform(32)(test.images[i]) for i in range(2)])
    for j, emb in enumerate(ex.text_features(prompts)):
        assert np.allclose(saved["maps"][j], _direct_gradcam(model, images, emb), atol=1e-5)
    assert res["pointing_game"]["n"] == 20 and os.path.getsize(res["grid"]) > 1000


def test_retrieval_clipscore_and_binary_equal_direct_computations(tiny_checkpoint, reference, tmp_path):
    from clipscratch.eval.binary import zero_shot_binary_scores
    from clipscratch.eval.clipscore import clip_score

    _, ex, parts = reference
    test = parts("shapes:colour")["test"]
    r = _run("retrieval", tiny_checkpoint, tmp_path, dataset="shapes:colour")
    img, txt = ex.image_features(test), ex.text_features([c[0] for c in test.captions])
    expected = retrieval_recall(img, txt, torch.arange(len(test)), ks=(1, 5, 10))
    assert {k: r[k] for k in expected} == pytest.approx(expected) and r["images"] == r["captions"] == 600
    cs = _run("clipscore", tiny_checkpoint, tmp_path, "--show", "2", dataset="shapes:colour")
    assert cs["mean_clip_score"] == pytest.approx(clip_score(img, txt).mean().item(), abs=1e-6)
    assert [h["clip_score"] for h in cs["highest"]] == sorted((h["clip_score"] for h in cs["highest"]), reverse=True)
    b = _run("binary", tiny_checkpoint, tmp_path, "--labels", "one shape", "several shapes", "--template", "a photo of {label}",
             "--shots", "4", "--seeds", "0", dataset="shapes:plural")
    plural = parts("shapes:plural")["test"]
    prompts = ex.text_features(["a photo of one shape", "a photo of several shapes"])
    p1 = zero_shot_binary_scores(ex.image_features(plural), prompts[None].expand(len(plural), -1, -1))
    assert b["zero_shot"]["accuracy"] == pytest.approx(((p1 > 0.5).long() == plural.labels).float().mean().item())
    assert 4 in b["few_shot"] and b["train_images"] == 600


def test_every_subcommand_has_help():
    for method in ("zeroshot", "retrieval", "linear-probe", "fewshot", "tip-adapter", "gradcam", "clipscore", "binary"):
        out = subprocess.run([sys.executable, os.path.join(ROOT, "evaluate.py"), method, "--help"], capture_output=True, text=True)
        assert out.returncode == 0 and "--model" in out.stdout


def test_bad_input_is_one_line_error(tmp_path):
    out = subprocess.run([sys.executable, os.path.join(ROOT, "evaluate.py"), "zeroshot", "--model", str(tmp_path / "nope.pt")],
                         capture_output=True, text=True)
    assert out.returncode == 2 and out.stderr.strip().count("\n") == 0 and "nope.pt" in out.stderr


@pytest.mark.parametrize("method", ["fewshot", "tip-adapter", "binary"])
def test_zero_or_negative_shots_are_rejected_by_the_parser(method, tmp_path):
    for bad in ("0", "-2"):
        out = subprocess.run([sys.executable, os.path.join(ROOT, "evaluate.py"), method, "--model", "x", "--shots", bad],
                             capture_output=True, text=True)
        assert out.returncode == 2 and "--shots" in out.stderr and "at least 1" in out.stderr


def test_missing_torchvision_dataset_names_the_download_flag(tmp_path):
    from clipscratch.errors import ClipscratchError

    with pytest.raises(ClipscratchError, match="--download"):
        from_spec("cifar10", root=str(tmp_path))


def test_a_folder_of_real_photos_gets_zero_shot_predictions_and_grad_cam(tiny_checkpoint, shared_data, tmp_path):
    """../shared/data/photos as it comes (grayscale and RGBA PNGs, a 3,000-pixel JPEG, no class
    folders): zero-shot with --classes ranks every photo, equal to a direct computation; Grad-CAM
    explains each prompt; methods that fit refuse a folder with no training part."""
    folder = os.path.join(shared_data, "photos")
    classes = ["cat", "rocket", "coffee"]
    out = evaluate.main(["zeroshot", "--model", tiny_checkpoint, "--dataset", f"imagefolder:{folder}", "--classes",
                         *classes, "--templates", "a photo of a {}.", "--out", str(tmp_path), "--cache-dir", ""])
    names = sorted(n for n in os.listdir(folder) if n.lower().endswith((".png", ".jpg")))
    assert [os.path.basename(r["image"]) for r in out["predictions"]] == names and len(names) == 12

    model, preprocess = clipscratch.load(tiny_checkpoint)
    with torch.no_grad():
        img = model.encode_image(torch.stack([preprocess(open_image(
            open(os.path.join(folder, n), "rb").read())) for n in names]))
        txt = model.encode_text(clipscratch.tokenize([f"a photo of a {c}." for c in classes]))
    probs = (100 * torch.nn.functional.normalize(img, dim=-1) @ torch.nn.functional.normalize(txt, dim=-1).T).softmax(-1)
    for row, p in zip(out["predictions"], probs):
        assert row["top1"] == classes[int(p.argmax())] and abs(row["p_top1"] - float(p.max())) < 1e-4

    cam = evaluate.main(["gradcam", "--model", tiny_checkpoint, "--dataset", f"imagefolder:{folder}", "--prompts",
                         "a cat", "a rocket", "--images", "12", "--out", str(tmp_path), "--cache-dir", ""])
    maps = np.load(cam["maps"])["maps"]
    assert maps.shape[:2] == (2, 12) and np.isfinite(maps).all() and not np.allclose(maps[0], maps[1])
    assert os.path.exists(tmp_path / "gradcam_grid.png")
    for method in (["linear-probe"], ["zeroshot"], ["gradcam"]):
        p = subprocess.run([sys.executable, os.path.join(ROOT, "evaluate.py"), *method, "--model", tiny_checkpoint,
                            "--dataset", f"imagefolder:{folder}", "--out", str(tmp_path), "--cache-dir", ""],
                           capture_output=True, text=True)
        assert p.returncode != 0 and p.stderr.strip().startswith("error:") and p.stderr.strip().count("\n") == 0, p.stderr
