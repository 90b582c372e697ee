"""The caption decoder equals transformers' GPT-2 on random weights; the parameter-efficient
methods start as the frozen language model and train only what they name."""
import pytest
import torch

from clipscratch.caption.decoder import CaptionDecoder, DecoderConfig
from clipscratch.caption.io import DecoderTokenizer, load_decoder, save_decoder
from clipscratch.caption.peft import freeze_all_but, trainable_names

transformers = pytest.importorskip("transformers")


def _gpt2(tmp_path, cross_attention: bool):
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=300, n_positions=24, n_embd=64, n_layer=2, n_head=4,
                                  add_cross_attention=cross_attention, bos_token_id=1, eos_token_id=2)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():  # random, non-zero everything (LayerNorm gains and biases included)
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(tmp_path / "gpt2")
    return model


@pytest.mark.parametrize("cross_attention", [False, True])
def test_decoder_equals_transformers_gpt2_on_random_weights(tmp_path, cross_attention):
    reference = _gpt2(tmp_path, cross_attention)
    ours, tokenizer, _ = load_decoder(str(tmp_path / "gpt2"))
    ids = torch.randint(0, 300, (3, 17))
    memory = torch.randn(3, 5, 64) if cross_attention else None
    with torch.no_grad():
        expected = reference(input_ids=ids, encoder_hidden_states=memory).logits
        got = ours(ids, memory=memory)
    assert got.shape == expected.shape == (3, 17, 300)
    assert ((got - expected).norm() / expected.norm()).item() < 1e-5
    back = save_decoder(ours, str(tmp_path / "ours"), DecoderTokenizer("clip"))
    again, _, _ = load_decoder(back)
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in ours.state_dict().items())


@pytest.mark.parametrize("method", ["none", "adapter", "prefix", "lora"])
def test_each_method_starts_as_the_language_model_and_trains_only_its_own_parameters(tmp_path, method):
    torch.manual_seed(0)
    lm = CaptionDecoder(DecoderConfig(vocab_size=300, context_length=24, width=64, layers=2, heads=4, cross_attention=False))
    save_decoder(lm, str(tmp_path / "lm"), DecoderTokenizer("clip"))
    model, _, _ = load_decoder(str(tmp_path / "lm"), method=method, cross_attention=True, image_width=32,
                               image_embed_dim=16, prefix_length=3)
    ids = torch.randint(0, 300, (2, 9))
    with torch.no_grad():
        plain = lm(ids)
        if method != "prefix":  # prefix tuning adds keys at the start; the others start as the identity
            assert torch.allclose(model(ids, memory=model.image_inputs(None, torch.randn(2, 6, 32))[1]), plain, atol=1e-5)
    names = trainable_names(model, method)
    params = [k for k, _ in model.named_parameters()]
    interface = {k for k in params if k.startswith(("prefix_map.", "image_proj.")) or ".crossattention." in k
                 or ".ln_cross_attn." in k or k.endswith(".cross_gate")}
    own = {k for k in params if {"none": False, "adapter": ".adapter." in k, "prefix": k.endswith(".attn.prefix"),
                                 "lora": ".lora_" in k}[method]}
    assert set(names) == interface | own and (method == "none" or own)
    trained = freeze_all_but(model, names)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    prefix, memory = model.image_inputs(torch.randn(2, 16), torch.randn(2, 6, 32))
    model(ids, prefix, memory).logsumexp(-1).mean().backward()
    opt.step()
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed <= set(names) and changed  # the language model stays frozen
    assert not any(k.startswith(("wte", "wpe", "ln_f")) or ".mlp." in k or k.endswith(("attn.c_attn.weight", "attn.c_proj.weight"))
                   for k in changed)
    assert trained < sum(p.numel() for p in model.parameters())


def test_compact_vocabulary_round_trips_the_words_it_was_built_from():
    tok = DecoderTokenizer.compact(["two red circles on the left", "one blue square"])
    assert len(tok.vocab) == len(set(tok.vocab)) < 20 and tok.decode(tok.encode("one red square on the left")) == \
        "one red square on the left"
    assert tok.decode([tok.special("bos")] + tok.encode("blue circles")) == "blue circles"
    assert tok.encode("a purple triangle") == []  # words outside the vocabulary are dropped


def test_captioning_on_shapes_end_to_end(shapes_model, tmp_path):
    """python -m clipscratch.caption train on the tiny shapes model, then evaluate.py caption:
    captions depend on the image, the language model stays frozen in every method."""
    import json
    import os
    import sys

    from safetensors.torch import load_file

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sys.path.insert(0, root)
    import evaluate
    from clipscratch.caption.__main__ import main as caption_main

    data = os.path.join(os.path.dirname(shapes_model), "data")
    out = tmp_path / "cap"
    caption_main(["train", "--config", os.path.join(root, "configs", "caption_shapes.yaml"), f"clip={shapes_model}",
                  f"lm.captions=wds:{data}/train-{{000000..000001}}.tar", "lm.steps=150", "captioner.steps=150",
                  "decoder.width=64", f"output_dir={out}"])
    lm = load_file(out / "lm" / "decoder.safetensors")
    for method in ("adapter", "prefix", "lora"):
        tuned = load_file(out / method / "decoder.safetensors")
        assert all(torch.equal(tuned[k], v) for k, v in lm.items())  # the language model, frozen
    res = evaluate.main(["caption", "--model", shapes_model, "--dataset", "shapes:colour", "--decoder", str(out / "adapter"),
                         str(out / "prefix"), str(out / "lora"), "--beams", "2", "--out", str(tmp_path / "eval"), "--cache-dir", ""])
    rows = {r["captions"]: r for r in res["results"]}
    assert set(rows) == {"adapter", "prefix", "lora", "nearest training image"}
    from clipscratch.eval.cider import cider_d

    best = 0.0
    for method in ("adapter", "prefix", "lora"):  # captions describe their own image better than others'
        captions = json.load(open(tmp_path / "eval" / f"captions_{method}.json"))
        assert len(captions) == 600 and all(c["caption"] for c in captions)
        candidates = {str(i): c["caption"] for i, c in enumerate(captions)}
        own = cider_d(candidates, {str(i): c["references"] for i, c in enumerate(captions)})[0]
        assert own == pytest.approx(rows[method]["cider"])
        shifted = max(cider_d(candidates, {str(i): captions[(i + k) % 600]["references"] for i in range(600)})[0]
                      for k in (1, 7, 50))
        assert own > shifted, method
        best = max(best, own / shifted)
    assert best > 1.2
    assert (tmp_path / "eval" / "caption_examples_lora.png").stat().st_size > 10_000
