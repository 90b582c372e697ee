"""The text tower on a side stream (models/tower_stream.py) and the towers compiled apart
(CLIP.compile_towers), as train.py runs them with text_stream=true. The streams themselves need
a GPU (bench/gpu_checks.py "text stream"); here: the order of the synchronisation, the paths
off a GPU, the compiled towers and the training wiring."""
import copy

import pytest
import torch
from torch._dynamo.utils import counters

import clipscratch
from clipscratch.models import clip as clip_module
from clipscratch.models import tower_stream
from clipscratch.models.packing import pack_tokens


def _batch(n=4):
    torch.manual_seed(1)
    images = torch.randn(n, 3, 32, 32)
    tokens = clipscratch.tokenize([f"a photo of {i} {'big ' * i}dogs" for i in range(n)])
    return images, tokens


class FakeStream:
    """Records what run_beside asks of a stream, in one log shared with the towers."""

    def __init__(self, name, log):
        self.name, self.log = name, log

    def wait_stream(self, other):
        self.log.append(f"{self.name} waits for {other.name}")


def test_run_beside_orders_both_streams_around_the_towers(monkeypatch):
    log = []
    main, side = FakeStream("main", log), FakeStream("side", log)
    current = [main]

    class On:  # torch.cuda.stream(s): s is current inside
        def __init__(self, stream):
            self.stream = stream

        def __enter__(self):
            current.append(self.stream)

        def __exit__(self, *exc):
            current.pop()

    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: current[-1])
    monkeypatch.setattr(torch.cuda, "stream", On)
    monkeypatch.setattr(tower_stream, "keep_for", lambda t, s: log.append(f"keep {tuple(t.shape)} for {s.name}"))
    images, tokens = _batch()
    packed = pack_tokens(tokens)

    def text_fn(t):
        log.append(f"text on {current[-1].name}")
        return torch.ones(4, 3)

    def image_fn(i):
        log.append(f"image on {current[-1].name}")
        return torch.zeros(4, 3)

    image, text = tower_stream.run_beside(side, text_fn, packed, image_fn, images)
    assert torch.equal(image, torch.zeros(4, 3)) and torch.equal(text, torch.ones(4, 3))
    kept_tokens = [f"keep {tuple(t.shape)} for side" for t in packed]
    assert log == ["side waits for main", "text on side", *kept_tokens, "image on main", "main waits for side",
                   "keep (4, 3) for main"]
    assert current == [main]  # the caller's stream is current again


def test_text_stream_off_a_gpu_is_the_one_stream_path(monkeypatch):
    """On the CPU (and inside torch.compile) forward takes the one-stream path: identical features."""
    images, tokens = _batch()
    torch.manual_seed(0)
    model = clipscratch.create_model("tiny-vit").eval()
    plain = model(images, tokens)
    monkeypatch.setattr(clip_module, "run_beside", lambda *a: pytest.fail("a side stream off a GPU"))
    model.set_text_stream(True, priority=-1)
    assert model.text_stream == -1
    streamed = model(images, tokens)
    assert torch.equal(plain.image_features, streamed.image_features)
    assert torch.equal(plain.text_features, streamed.text_features)
    model.set_text_stream(False)
    assert model.text_stream is None


def test_compiled_towers_serve_forward_only_and_stay_behind_in_copies():
    torch._dynamo.reset()
    images, tokens = _batch()
    torch.manual_seed(0)
    model = clipscratch.create_model("tiny-vit").train()
    packed = pack_tokens(tokens)  # as the training loop hands it over
    eager = model(images, packed)
    model.compile_towers()
    before = counters["stats"]["unique_graphs"]
    compiled = model(images, packed)
    assert counters["stats"]["unique_graphs"] >= before + 2  # one graph or more for each tower
    # fp32 on the CPU: the compiled kernels sum in another order, rounding-level differences
    torch.testing.assert_close(compiled.image_features, eager.image_features, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(compiled.text_features, eager.text_features, rtol=1e-5, atol=1e-6)
    compiled.text_features.sum().backward()
    assert all(p.grad is not None for p in model.text.parameters())

    graphs = counters["stats"]["unique_graphs"]
    model.eval()
    with torch.no_grad():
        model.encode_image(images), model.encode_text(tokens)  # evaluations: eager
        clone = copy.deepcopy(model)
        assert clone._compiled_encoders is None and model._compiled_encoders is not None
        out = clone(images, tokens)  # the copy's own weights, eager
    assert counters["stats"]["unique_graphs"] == graphs
    assert torch.equal(out.text_features, model.encode_text(tokens, normalize=True))
    assert set(clone.state_dict()) == set(model.state_dict())
    torch._dynamo.reset()


@pytest.mark.parametrize("overrides, whole, towers, stream", [
    ([], False, False, None), (["compile=true"], True, False, None), (["text_stream=true"], False, False, 0),
    (["compile=true", "text_stream=true"], False, True, 0)])
def test_training_compiles_the_towers_apart_for_the_text_stream(overrides, whole, towers, stream):
    from clipscratch.train.config import resolve
    from clipscratch.train.run import build_model, compile_for_training

    cfg = resolve(None, ["model=tiny-vit", "data.train=x.tar", *overrides])
    core = build_model(cfg)
    model = compile_for_training(core, core, cfg)
    assert isinstance(model, torch._dynamo.eval_frame.OptimizedModule) == whole
    assert (model is core) == (not whole)
    assert (core._compiled_encoders is not None) == towers
    assert core.text_stream == stream


@pytest.mark.parametrize("processes, switched", [(1, []), (2, [False])])
def test_ddp_runs_silence_the_accumulate_grad_stream_warning_they_rely_on(monkeypatch, processes, switched):
    calls = []
    monkeypatch.setattr(torch.autograd.graph, "set_warn_on_accumulate_grad_stream_mismatch", calls.append,
                        raising=False)
    tower_stream.expect_ddp_accumulation(processes)
    assert calls == switched
    monkeypatch.delattr(torch.autograd.graph, "set_warn_on_accumulate_grad_stream_mismatch")
    tower_stream.expect_ddp_accumulation(processes)  # a torch without the switch: nothing to do
