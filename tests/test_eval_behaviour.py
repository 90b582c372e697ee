"""Behaviours users rely on in evaluation, each checked against an independent computation:
the zero-shot template ensemble, which parameters few-shot finetuning trains, which prompt
Grad-CAM explains, and where the linear probe chooses its L2 strength."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import clipscratch
from clipscratch.eval.features import FeatureExtractor
from clipscratch.eval.fewshot import class_embeddings, finetune
from clipscratch.eval.gradcam import compute_cams, explain
from clipscratch.eval.linear_probe import linear_probe
from clipscratch.eval.metrics import class_prompts

CLASSES = ["red", "green", "blue"]
TEMPLATES = ["a photo of {} shapes", "{} objects", "something coloured {}"]


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    return clipscratch.create_model("tiny-vit").eval()


def _hand_classifier(model, classnames, templates):
    """Per class: the mean of its templates' unit text embeddings, renormalised."""
    rows = []
    with torch.no_grad():
        for name in classnames:
            emb = [F.normalize(model.encode_text(clipscratch.tokenize([t.format(name)])), dim=-1)[0] for t in templates]
            mean = torch.stack(emb).mean(0)
            rows.append(mean / mean.norm())
    return torch.stack(rows)


def test_zeroshot_classifier_averages_each_class_over_its_templates(vit):
    expected = _hand_classifier(vit, CLASSES, TEMPLATES)
    got = FeatureExtractor(vit, clipscratch.image_transform(32), progress=False).classifier(CLASSES, TEMPLATES)
    assert got.shape == (3, vit.config.embed_dim)
    assert torch.allclose(got.norm(dim=-1), torch.ones(3), atol=1e-6)
    assert torch.allclose(got, expected, atol=1e-6)
    # the templates really disagree, so a wrong grouping or a missing renormalisation shows
    single = _hand_classifier(vit, CLASSES, TEMPLATES[:1])
    assert (got - single).abs().max() > 1e-2


def test_fewshot_class_embeddings_use_the_same_class_major_prompts(vit):
    assert class_prompts(["a", "b"], ["x {}", "y {}"]) == ["x a", "y a", "x b", "y b"]
    tokens = clipscratch.tokenize(class_prompts(CLASSES, TEMPLATES))
    with torch.no_grad():
        got = class_embeddings(vit, tokens, len(CLASSES))
    assert torch.allclose(got, _hand_classifier(vit, CLASSES, TEMPLATES), atol=1e-6)


def _expected_names(model, part):
    names = [n for n, _ in model.named_parameters()]
    vit = hasattr(model.visual, "transformer")
    return {
        "text": {n for n in names if n.startswith("text.")},
        "image": {n for n in names if n.startswith("visual.")},
        "text_projection": {"text.text_projection"},
        "image_projection": {"visual.proj"} if vit else {"visual.attnpool.c_proj.weight", "visual.attnpool.c_proj.bias"},
        "temperature": {"logit_scale"},
        "visual.transformer.resblocks.1.*": {n for n in names if n.startswith("visual.transformer.resblocks.1.")},
        "layer4.*": set(),
    }[part]


@pytest.mark.parametrize("arch,part", [
    ("tiny-vit", "text"), ("tiny-vit", "image"), ("tiny-vit", "text_projection"), ("tiny-vit", "image_projection"),
    ("tiny-vit", "visual.transformer.resblocks.1.*"), ("tiny-rn", "image_projection"), ("tiny-rn", "image"),
    ("tiny-rn", "text_projection"),
])
def test_finetune_changes_exactly_the_part_asked_for(arch, part):
    torch.manual_seed(0)
    base = clipscratch.create_model(arch).eval()
    before = {k: v.clone() for k, v in base.state_dict().items()}
    size = base.image_size
    images = torch.randn(6, 3, size, size)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    tokens = clipscratch.tokenize(class_prompts(CLASSES, TEMPLATES[:2]))
    tuned = finetune(base, part, images, labels, tokens, 3, epochs=2, lr=1e-2, batch_size=3)
    changed = {k for k, v in tuned.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == _expected_names(base, part)  # buffers (BatchNorm statistics) included: none moves
    assert all(torch.equal(v, before[k]) for k, v in base.state_dict().items())  # the base model is untouched


def test_an_unknown_part_is_one_clear_error():
    from clipscratch.errors import ClipscratchError

    model = clipscratch.create_model("tiny-vit")
    with pytest.raises(ClipscratchError, match="matches no parameter.*text_projection"):
        finetune(model, "vision.*", torch.randn(2, 3, 32, 32), torch.tensor([0, 1]), clipscratch.tokenize(["a", "b"]), 2)


def _direct_gradcam(model, images, prompt_embedding):
    """pytorch-grad-cam run by hand on the similarity to one prompt (target column 0)."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    class OnePrompt(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, x):
            return 100 * F.normalize(self.model.encode_image(x), dim=-1) @ F.normalize(prompt_embedding, dim=-1)[:, None]

    grid = model.visual.grid_size

    def reshape(t):
        return t[:, 1:, :].reshape(t.shape[0], grid, grid, t.shape[-1]).permute(0, 3, 1, 2)

    with GradCAM(model=OnePrompt(), target_layers=[model.visual.transformer.resblocks[-1].ln_1], reshape_transform=reshape) as cam:
        return cam(input_tensor=images, targets=[ClassifierOutputTarget(0)] * images.shape[0])


def test_gradcam_explains_the_prompt_asked_for(vit):
    torch.manual_seed(1)
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        prompts = vit.encode_text(clipscratch.tokenize(["a red circle", "a blue square", "a green triangle"]))
    maps = explain(vit, images, prompts)
    assert maps.shape == (3, 3, 32, 32)
    for j in range(3):
        assert np.allclose(maps[j], _direct_gradcam(vit, images, prompts[j]), atol=1e-5)
        assert np.allclose(compute_cams(vit, images, prompts, [j] * 3), maps[j], atol=1e-5)
    assert np.abs(maps[0] - maps[1]).max() > 0.05 and np.abs(maps[1] - maps[2]).max() > 0.05
    mixed = compute_cams(vit, images, prompts, [2, 0, 1])  # a different prompt for each image
    assert np.allclose(mixed, np.stack([maps[2][0], maps[0][1], maps[1][2]]), atol=1e-5)


def test_linear_probe_chooses_c_on_validation_and_refits_on_train_plus_validation(monkeypatch):
    """A spy on scikit-learn: every candidate C is fit on train and scored on validation; the
    final model is fit once on train + validation with the best C; the test features are seen
    exactly once, by the final score."""
    import sklearn.linear_model

    calls = []
    Real = sklearn.linear_model.LogisticRegression

    class Spy(Real):
        def fit(self, X, y, *a, **k):
            calls.append(("fit", self.C, np.array(X)))
            return super().fit(X, y, *a, **k)

        def score(self, X, y, *a, **k):
            result = super().score(X, y, *a, **k)
            calls.append(("score", self.C, np.array(X), result))
            return result

    monkeypatch.setattr(sklearn.linear_model, "LogisticRegression", Spy)
    g = torch.Generator().manual_seed(4)
    centers = torch.randn(3, 16, generator=g)
    def make(n):
        y = torch.arange(n) % 3
        return centers[y] + 1.5 * torch.randn(n, 16, generator=g), y
    (tx, ty), (vx, vy), (sx, sy) = make(60), make(30), make(45)
    cs = [0.01, 1.0, 100.0]
    res = linear_probe(tx, ty, vx, vy, sx, sy, cs)

    norm = lambda x: F.normalize(x, dim=-1).numpy()  # noqa: E731
    search, final_fit, final_score = calls[:-2], calls[-2], calls[-1]
    assert [c[:2] for c in search] == [(k, c) for c in cs for k in ("fit", "score")]
    for c in search:
        assert np.allclose(c[2], norm(tx) if c[0] == "fit" else norm(vx))
    val_scores = {c[1]: c[3] for c in search if c[0] == "score"}
    best = max(cs, key=lambda c: (val_scores[c], -c))
    assert final_fit[0] == "fit" and final_fit[1] == best == res["C"]
    assert np.allclose(final_fit[2], np.concatenate([norm(tx), norm(vx)]))
    assert final_score[0] == "score" and np.allclose(final_score[2], norm(sx)) and res["top1"] == final_score[3]
    assert sum(1 for c in calls if c[2].shape == norm(sx).shape and np.allclose(c[2], norm(sx))) == 1
