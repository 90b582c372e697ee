"""Loading OpenAI's released layouts gives exactly OpenAI's encoders (random weights)."""
import warnings

import pytest
import torch

import clipscratch
from helpers import randomize_, rel_err

clip = pytest.importorskip("clip")
import clip.model as openai_model  # noqa: E402


def _openai_reference(name: str, seed: int):
    cfg = clipscratch.get_config(name)
    v, t = cfg.vision, cfg.text
    ref = openai_model.CLIP(cfg.embed_dim, v.image_size, v.layers, v.width, None if v.is_resnet else v.patch_size,
                            t.context_length, t.vocab_size, t.width, t.heads, t.layers)
    return randomize_(ref, seed=seed).eval(), v.image_size


def _inputs(image_size: int):
    images = torch.randn(3, 3, image_size, image_size, generator=torch.Generator().manual_seed(1))
    tokens = clip.tokenize(["a photo of a cat", "Two dogs playing in the snow!", "x"])
    return images, tokens


def _assert_same_encoders(ours, ref, image_size):
    images, tokens = _inputs(image_size)
    with torch.no_grad():
        ref_img, ref_txt = ref.encode_image(images).float(), ref.encode_text(tokens).float()
        img, txt = ours.encode_image(images), ours.encode_text(tokens)
    assert img.shape == ref_img.shape and txt.shape == ref_txt.shape
    assert ref_img.std(0).abs().sum() > 0 and ref_txt.std(0).abs().sum() > 0  # inputs give distinct outputs
    assert rel_err(img, ref_img) < 1e-5
    assert rel_err(txt, ref_txt) < 1e-5


@pytest.mark.parametrize("name", ["ViT-B/32", "RN50"])
def test_encoders_match_openai_from_fp16_state_dict(name, tmp_path):
    ref, size = _openai_reference(name, seed=3)
    openai_model.convert_weights(ref)  # the released files are fp16
    sd = ref.state_dict()
    sd.update(input_resolution=torch.tensor(size), context_length=torch.tensor(77), vocab_size=torch.tensor(49408))
    path = tmp_path / "model.pt"
    torch.save(sd, path)
    reference, _ = clip.load(str(path), device="cpu", jit=False)  # OpenAI's own loader (casts to fp32 on CPU)
    ours, _ = clipscratch.load(str(path))
    assert ours.config.activation == "quick_gelu"
    assert ours.config == clipscratch.get_config(name)
    _assert_same_encoders(ours, reference, size)


@pytest.mark.parametrize("name", ["ViT-B/32", "RN50"])
def test_encoders_match_openai_from_torchscript_archive(name, tmp_path):
    ref, size = _openai_reference(name, seed=4)
    images, tokens = _inputs(size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(ref, (images[:1], tokens[:1]), check_trace=False)
    traced = traced.half()
    path = tmp_path / "model.pt"
    traced.save(str(path))
    reference, _ = clip.load(str(path), device="cpu", jit=False)
    ours, _ = clipscratch.load(str(path))
    assert ours.config == clipscratch.get_config(name)
    _assert_same_encoders(ours, reference, size)


def test_preprocess_matches_openai():
    from PIL import Image
    import numpy as np

    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (180, 260, 3), dtype=np.uint8))
    ours = clipscratch.image_transform(224)(image)
    from clip.clip import _transform

    assert torch.equal(ours, _transform(224)(image))
    grey = image.convert("L")
    assert torch.equal(clipscratch.image_transform(224)(grey), _transform(224)(grey))


def test_forward_returns_normalised_features_and_clamped_scale():
    model = clipscratch.create_model("tiny-vit")
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
        img, txt, scale, bias = model(torch.randn(2, 3, 32, 32), clipscratch.tokenize(["a", "b"]))
    assert torch.allclose(img.norm(dim=-1), torch.ones(2)) and torch.allclose(txt.norm(dim=-1), torch.ones(2))
    assert scale.item() == 100.0 and bias is None
    siglip = clipscratch.create_model("tiny-vit", init_logit_bias=-10.0)
    assert siglip(torch.randn(2, 3, 32, 32), clipscratch.tokenize(["a", "b"])).bias is siglip.logit_bias
    assert abs(clipscratch.create_model("tiny-vit").logit_scale.exp().item() - 1 / 0.07) < 1e-4
