"""transformers and open_clip layouts load exactly, and exports round-trip exactly."""
import pytest
import torch

import clipscratch
from clipscratch.loading import export
from helpers import randomize_, rel_err


def _inputs(size):
    images = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(5))
    tokens = clipscratch.tokenize(["a diagram of a transformer", "an orange cat on a red sofa"])
    return images, tokens


@torch.no_grad()
def _assert_matches_hf(ours, ref, image_size):
    images, tokens = _inputs(image_size)
    ref_img = ref.get_image_features(pixel_values=images)
    ref_txt = ref.get_text_features(input_ids=tokens)
    ref_img = getattr(ref_img, "pooler_output", ref_img)  # newer transformers return an output object
    ref_txt = getattr(ref_txt, "pooler_output", ref_txt)
    assert rel_err(ours.encode_image(images), ref_img) < 1e-5
    assert rel_err(ours.encode_text(tokens), ref_txt) < 1e-5


def test_encoders_match_transformers_clipmodel_vit_b32(tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.CLIPConfig(
        text_config=dict(hidden_size=512, intermediate_size=2048, num_attention_heads=8, num_hidden_layers=12,
                         max_position_embeddings=77, vocab_size=49408, hidden_act="quick_gelu",
                         bos_token_id=49406, eos_token_id=49407),
        vision_config=dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
                           image_size=224, patch_size=32, hidden_act="quick_gelu"),
        projection_dim=512,
    )
    ref = randomize_(transformers.CLIPModel(cfg), seed=7).eval()
    ref.save_pretrained(tmp_path / "hf")
    ours, _ = clipscratch.load(str(tmp_path / "hf"))
    assert ours.config == clipscratch.get_config("ViT-B/32")
    _assert_matches_hf(ours, ref, 224)
    assert torch.equal(ours.logit_scale, ref.logit_scale)


def test_encoders_match_open_clip_vit_b16_gelu_training_checkpoint(tmp_path):
    open_clip = pytest.importorskip("open_clip")
    ref = randomize_(open_clip.create_model("ViT-B-16"), seed=8).eval()
    ckpt = {"epoch": 3, "name": "run", "state_dict": {"module." + k: v for k, v in ref.state_dict().items()}}
    torch.save(ckpt, tmp_path / "epoch_3.pt")
    ours, _ = clipscratch.load(str(tmp_path / "epoch_3.pt"), model="ViT-B-16")
    assert ours.config.activation == "gelu"
    images, tokens = _inputs(224)
    with torch.no_grad():
        assert rel_err(ours.encode_image(images), ref.encode_image(images)) < 1e-5
        assert rel_err(ours.encode_text(tokens), ref.encode_text(tokens)) < 1e-5


def _equal_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("layout,name", [("hf", "tiny-vit"), ("open_clip", "tiny-vit"), ("openai", "tiny-vit"),
                                         ("open_clip", "tiny-rn"), ("openai", "tiny-rn")])
def test_export_round_trip_is_exact(layout, name, tmp_path):
    model = randomize_(clipscratch.create_model(name), seed=9).eval()
    target = tmp_path / ("hf" if layout == "hf" else "model.pt")
    export(model, str(target), layout)
    back, _ = clipscratch.load(str(target), model=model.config if layout == "open_clip" else None)
    assert back.config == model.config or layout == "openai"
    assert _equal_state(model, back)


def test_export_to_hf_loads_in_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    model = randomize_(clipscratch.create_model("tiny-vit"), seed=10).eval()
    export(model, str(tmp_path / "hf"), "hf")
    ref = transformers.CLIPModel.from_pretrained(str(tmp_path / "hf")).eval()
    _assert_matches_hf(model, ref, 32)


def test_export_to_open_clip_loads_in_open_clip(tmp_path):
    open_clip = pytest.importorskip("open_clip")
    model = randomize_(clipscratch.create_model("ViT-B-32"), seed=11).eval()
    export(model, str(tmp_path / "oc.pt"), "open_clip")
    ref = open_clip.create_model("ViT-B-32", pretrained=str(tmp_path / "oc.pt")).eval()
    images, tokens = _inputs(224)
    with torch.no_grad():
        assert rel_err(model.encode_image(images), ref.encode_image(images)) < 1e-5
        assert rel_err(model.encode_text(tokens), ref.encode_text(tokens)) < 1e-5


def test_export_resnet_to_hf_is_refused(tmp_path):
    with pytest.raises(clipscratch.errors.ClipscratchError, match="ResNet"):
        export(clipscratch.create_model("tiny-rn"), str(tmp_path / "hf"), "hf")
