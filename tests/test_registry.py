"""Named configs: all nine OpenAI models build with the reference parameter counts."""
import pytest
import torch

import clipscratch
from clipscratch.models.registry import openai_model_names


def _count(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", openai_model_names())
def test_openai_configs_have_reference_parameter_counts(name):
    open_clip = pytest.importorskip("open_clip")
    oc_name = name.replace("/", "-").replace("@336px", "-336")
    cfg = open_clip.factory.get_model_config(oc_name)
    with torch.device("meta"):
        ours = clipscratch.create_model(name, init=False)
        ref = open_clip.model.CLIP(**cfg, quick_gelu=True)
    assert _count(ours) == _count(ref)
    shapes_ref = {k: tuple(v.shape) for k, v in ref.state_dict().items() if k != "attn_mask"}
    shapes_ours = {k[5:] if k.startswith("text.") else k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert shapes_ours == shapes_ref


def test_names_resolve_to_the_right_activation():
    assert clipscratch.get_config("ViT-B/32").activation == "quick_gelu"
    assert clipscratch.get_config("ViT-B-32").activation == "gelu"
    assert clipscratch.get_config("ViT-B-32-quickgelu") == clipscratch.get_config("ViT-B/32")
    assert clipscratch.get_config("ViT-L-14-336-quickgelu").vision.image_size == 336
    assert {"RN50", "ViT-L/14@336px", "ViT-B-16", "tiny-vit", "tiny-rn"} <= set(clipscratch.list_models())
    with pytest.raises(KeyError, match="known models"):
        clipscratch.get_config("ViT-Z/99")


def test_create_model_overrides():
    m = clipscratch.create_model("tiny-vit", embed_dim=32, vision={"layers": 1}, **{"text.layers": 1})
    assert m.config.embed_dim == 32 and len(m.visual.transformer.resblocks) == 1 and len(m.text.transformer.resblocks) == 1
    with pytest.raises(ValueError, match="valid keys"):
        clipscratch.create_model("tiny-vit", vision={"depth": 3})


def test_text_may_be_trimmed_to_the_longest_caption():
    model = clipscratch.create_model("tiny-vit").eval()
    tokens = clipscratch.tokenize(["a red square", "two blue circles on the left"])
    trimmed = tokens[:, : int((tokens != 0).sum(1).max())]
    with torch.no_grad():
        assert torch.allclose(model.encode_text(tokens), model.encode_text(trimmed), rtol=1e-5, atol=1e-5)


def test_resnet_tower_output_shape():
    model = clipscratch.create_model("tiny-rn").eval()
    with torch.no_grad():
        assert model.encode_image(torch.randn(2, 3, 64, 64)).shape == (2, 64)
