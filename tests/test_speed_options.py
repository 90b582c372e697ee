"""Every speed option computes the same loss (and gradients) as the plain path."""
import io

import pytest
import torch
from PIL import Image

import clipscratch
from clipscratch.loss import ClipLoss
from clipscratch.train.step import plain_step


def _batch(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, 32, 32, generator=g)
    tokens = clipscratch.tokenize([f"a photo of {i} {'red ' * (i % 4)}things" for i in range(n)])
    return images, tokens


def _loss_and_grads(model, batch):
    model.zero_grad()
    loss = plain_step(model, batch, ClipLoss(), lambda l: l.backward()).item()
    return loss, [p.grad.clone() for p in model.parameters()]


def _pair(**overrides):
    torch.manual_seed(0)
    a = clipscratch.create_model("tiny-vit", **overrides).train()
    b = clipscratch.create_model("tiny-vit", **overrides).train()
    b.load_state_dict(a.state_dict())
    return a, b


def _saved_bytes(model, batch) -> int:
    """Bytes of the tensors autograd keeps for the backward of one loss (each storage once)."""
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        plain_step(model, batch, ClipLoss(), lambda l: None)
    return sum(storages.values())


@pytest.mark.parametrize("setter", ["set_grad_checkpointing", "set_mlp_recompute"])
def test_recomputation_gives_the_same_loss_and_gradients_and_keeps_less(setter):
    """Gradient checkpointing (each block again) and MLP recomputation (LayerNorm and the MLP
    again) run the same float32 kernels on the same inputs: the same loss and gradients, bit for
    bit; and autograd keeps fewer bytes (the MLP's [B, T, 4C] hidden activations are gone)."""
    plain, other = _pair()
    getattr(other, setter)(True)
    la, ga = _loss_and_grads(plain, _batch())
    lb, gb = _loss_and_grads(other, _batch())
    assert la == lb
    assert all(torch.equal(x, y) for x, y in zip(ga, gb))
    vision = other.visual.transformer  # its MLPs' hidden activations alone: two [6, T, 4C] fp32 tensors per block
    hidden = vision.layers * 2 * 6 * other.visual.positional_embedding.shape[0] * 4 * vision.width * 4
    assert _saved_bytes(plain, _batch()) - _saved_bytes(other, _batch()) >= hidden


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-300)).item()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_trimmed_text_gives_the_same_loss_and_gradients(dtype):
    """Cutting the padding after the longest caption changes no number: exact in float64
    (the causal mask keeps padding out of every pooled feature). In float32 only the order of
    the attention and matmul sums changes with the sequence length, so each gradient tensor
    agrees to fp32 rounding (eps 6e-8) amplified by cancellation in the backward sums: 2e-6 of
    its norm seen; 1e-4 leaves a 50x margin, while letting padding leak into the features (no
    causal mask) gives errors of order 1."""
    a, b = _pair()
    a, b = a.to(dtype), b.to(dtype)
    images, tokens = _batch()
    images = images.to(dtype)
    trimmed = tokens[:, : int((tokens != 0).sum(1).max())]
    assert trimmed.shape[1] < tokens.shape[1]
    la, ga = _loss_and_grads(a, (images, tokens))
    lb, gb = _loss_and_grads(b, (images, trimmed))
    tol = 1e-12 if dtype == torch.float64 else 1e-4
    assert abs(la - lb) <= tol * abs(la)
    errors = {n: _rel(x, y) for (n, _), x, y in zip(a.named_parameters(), ga, gb) if y.abs().max() > 0}
    assert max(errors.values()) <= tol, sorted(errors.items(), key=lambda kv: -kv[1])[:3]


def _flickr_tokens(shared_data, n=48):
    import os

    from clipscratch.data.captions import read_captions

    table = read_captions(os.path.join(shared_data, "flickr8k-captions", "Flickr8k.token.txt"))
    pool = sorted((c for caps in list(table.values())[:400] for c in caps), key=len)
    captions = [c for pair in zip(pool[: n // 2], pool[::-1][: n // 2]) for c in pair]  # the shortest and longest, mixed
    return clipscratch.tokenize(captions, truncate=True)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("checkpointing,kernel", [(False, "auto"), (True, "auto"), (False, "varlen")])
def test_packed_text_gives_the_same_features_loss_and_gradients(shared_data, dtype, checkpointing, kernel):
    """Real Flickr8k captions (lengths 5 to 40 tokens), packed into one sequence: the same
    features, loss and gradients as the padded batch (attended in the padded layout by SDPA on
    the CPU, where flash's varlen kernel, asked for, does not run). float64: exact to rounding
    (1e-12); float32: only summation orders change, as for trimming (same 1e-4 bound, 1e-6 seen)."""
    tokens = _flickr_tokens(shared_data)
    lengths = tokens.argmax(-1) + 1
    assert lengths.min() < 10 and lengths.max() > 25  # really ragged
    a, b = _pair()
    a, b = a.to(dtype), b.to(dtype)
    b.set_text_packing(True, kernel)
    for m in (a, b):
        m.set_grad_checkpointing(checkpointing)
    images = torch.randn(len(tokens), 3, 32, 32, dtype=dtype, generator=torch.Generator().manual_seed(1))
    tol = 1e-12 if dtype == torch.float64 else 1e-4
    with torch.no_grad():
        assert _rel(b.encode_text(tokens), a.encode_text(tokens)) <= tol
    la, ga = _loss_and_grads(a, (images, tokens))
    lb, gb = _loss_and_grads(b, (images, tokens))
    assert abs(la - lb) <= tol * abs(la)
    errors = {n: _rel(y, x) for (n, _), x, y in zip(a.named_parameters(), ga, gb) if x.abs().max() > 0}
    assert max(errors.values()) <= tol, sorted(errors.items(), key=lambda kv: -kv[1])[:3]


def test_unknown_packed_attention_kernel_is_refused():
    model = clipscratch.create_model("tiny-vit")
    with pytest.raises(ValueError, match="unknown packed attention kernel 'flash'; use one of auto, varlen, efficient, sdpa"):
        model.set_text_packing(True, "flash")


@pytest.mark.parametrize("kernel,cuda,dtype,filled,chosen", [
    ("auto", True, torch.bfloat16, False, "efficient"),  # plain packing on a GPU: the padded layout (parts 48-50)
    ("auto", True, torch.bfloat16, True, "varlen"),  # filled for CUDA graphs: T is the whole context
    ("auto", True, torch.float32, True, "efficient"),  # varlen runs in half precision only
    ("varlen", True, torch.float16, False, "varlen"),
    ("sdpa", True, torch.bfloat16, False, "sdpa"),
    ("auto", False, torch.bfloat16, True, "sdpa"),  # the CPU: SDPA's own pick
    ("efficient", False, torch.float32, False, "sdpa"),
])
def test_packed_attention_kernel_choice(monkeypatch, kernel, cuda, dtype, filled, chosen):
    from types import SimpleNamespace

    from clipscratch.models import packing

    monkeypatch.setattr(packing, "_VARLEN", lambda *a: None)  # as where torch has the varlen kernel
    tokens = clipscratch.tokenize(["a dog", "a cat on a mat"])
    packed = packing.pack_tokens(tokens, bucket=16 if filled else 0)
    qkv = SimpleNamespace(is_cuda=cuda, dtype=dtype)  # what the choice reads of the projections' output
    assert packing.attention_kernel(kernel, qkv, packed) == chosen


def test_attention_kernel_reaches_every_attention_forward_and_unknown_ones_are_refused(monkeypatch):
    from clipscratch.models import layers

    model = clipscratch.create_model("tiny-vit")
    with pytest.raises(ValueError, match="unknown attention kernel 'cudnn'; use one of auto, sdpa"):
        model.set_attention_kernel("cudnn")
    seen = []  # (T, kernel) of each attention call
    choose = layers.sdpa_backends
    monkeypatch.setattr(layers, "sdpa_backends", lambda q, kernel: seen.append((q.shape[-2], kernel)) or choose(q, kernel))
    images, tokens = torch.randn(2, 3, 32, 32), clipscratch.tokenize(["a dog", "a cat on a mat"])
    for kernel in ("sdpa", "auto"):
        model.set_attention_kernel(kernel)
        seen.clear()
        model(images, tokens)
        assert seen == [(17, kernel)] * 2 + [(77, kernel)] * 2  # 2 image blocks of 16 patches + CLS, 2 text blocks


@pytest.mark.parametrize("kernel,cuda,T,efficient_first", [
    ("auto", True, 50, True),  # ViT-B/32's image tokens: 75% of cuDNN's GPU time (part 58)
    ("auto", True, 64, True),
    ("auto", True, 65, False),  # cuDNN is faster from 65 tokens on (part 58)
    ("auto", True, 197, False),
    ("sdpa", True, 50, False),
    ("auto", False, 50, False),  # the CPU: SDPA's own pick
])
def test_short_sequences_try_the_memory_efficient_kernel_first_on_a_gpu(kernel, cuda, T, efficient_first):
    from types import SimpleNamespace

    from torch.nn.attention import SDPBackend

    from clipscratch.models import layers

    q = SimpleNamespace(is_cuda=cuda, shape=(2, 12, T, 64))  # what the choice reads of q [B, H, T, D]
    before = torch._C._get_sdp_priority_order()
    with layers.sdpa_backends(q, kernel):
        order = torch._C._get_sdp_priority_order()
    assert order[0] == SDPBackend.EFFICIENT_ATTENTION.value if efficient_first else order == before
    assert sorted(order) == sorted(before)  # every backend still allowed, in another order
    assert torch._C._get_sdp_priority_order() == before


def test_channels_last_resnet_gives_the_same_loss_and_gradients():
    """bench/train_step.py --channels-last: the ModifiedResNet in channels-last memory format."""
    torch.manual_seed(0)
    a = clipscratch.create_model("tiny-rn").train()
    b = clipscratch.create_model("tiny-rn").train()
    b.load_state_dict(a.state_dict())
    b = b.to(memory_format=torch.channels_last)
    images, tokens = _batch()
    images = torch.nn.functional.interpolate(images, size=a.image_size)
    la, ga = _loss_and_grads(a, (images, tokens))
    lb, gb = _loss_and_grads(b, (images.contiguous(memory_format=torch.channels_last), tokens))
    assert la == pytest.approx(lb, abs=1e-5)
    assert all(torch.allclose(x, y, rtol=1e-4, atol=1e-5) for x, y in zip(ga, gb))


def test_fused_adamw_takes_the_same_step():
    from clipscratch.train.config import OptimConfig
    from clipscratch.train.optim import make_optimizer

    a, b = _pair()
    _loss_and_grads(a, _batch())
    _loss_and_grads(b, _batch())
    make_optimizer(a, OptimConfig()).step()
    make_optimizer(b, OptimConfig(), fused=True).step()
    assert all(torch.allclose(x, y, atol=1e-6) for x, y in zip(a.parameters(), b.parameters()))


def test_torch_compile_gives_the_same_loss():
    a, b = _pair()
    compiled = torch.compile(b)
    la, _ = _loss_and_grads(a, _batch())
    lb = plain_step(compiled, _batch(), ClipLoss(), lambda l: l.backward()).item()
    assert la == pytest.approx(lb, abs=1e-5)


def test_patch_dropout_keeps_the_cls_token_and_a_fixed_share_and_is_off_in_eval():
    a, b = _pair(vision={"patch_dropout": 0.5})
    plain, _ = _pair()
    images, _ = _batch()
    b.eval()
    plain.eval()
    plain.load_state_dict(b.state_dict())
    with torch.no_grad():
        assert torch.equal(b.encode_image(images), plain.encode_image(images))  # identity at eval
    x = torch.randn(2, 17, 64)
    kept = a.visual._drop_patches(x)
    assert kept.shape == (2, 1 + 8, 64) and torch.equal(kept[:, 0], x[:, 0])


def test_gpu_decode_path_matches_the_pil_eval_transform_closely():
    from clipscratch.data.gpu_decode import gpu_transform

    g = torch.Generator().manual_seed(0)
    arr = (torch.rand(96, 128, 3, generator=g) * 8 + torch.linspace(0, 190, 128)[None, :, None]).to(torch.uint8).numpy()  # smooth content
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=95)
    raw = torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)
    bad = torch.frombuffer(bytearray(b"\xff\xd8 not really a jpeg"), dtype=torch.uint8)
    images, keep = gpu_transform([raw, bad, raw], 64, "cpu")
    assert keep.tolist() == [True, False, True] and images.shape == (2, 3, 64, 64)
    reference = clipscratch.image_transform(64)(Image.open(io.BytesIO(buf.getvalue())))
    assert (images[0] - reference).abs().mean() < 0.05  # resampling differs from PIL's bicubic by rounding
    # a large image: shrunk by a box filter first (factor 300 // 64 = 4), then sampled
    yy, xx = torch.meshgrid(torch.linspace(0, 6, 300), torch.linspace(0, 8, 400), indexing="ij")
    big = torch.stack([torch.sin(yy) * 90 + 120, torch.cos(xx) * 90 + 120, (yy + xx) * 12], -1).to(torch.uint8).numpy()
    buf = io.BytesIO()
    Image.fromarray(big).save(buf, format="JPEG", quality=95)
    images, _ = gpu_transform([torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)], 64, "cpu")
    reference = clipscratch.image_transform(64)(Image.open(io.BytesIO(buf.getvalue())))
    assert (images[0] - reference).abs().mean() < 0.05


def test_gpu_decode_crops_land_where_pils_resized_crop_puts_them():
    """_resized_crops against torchvision's resized_crop (PIL bicubic) on the same boxes."""
    from torchvision.transforms import functional as TF

    from clipscratch.data.gpu_decode import _resized_crops

    yy, xx = torch.meshgrid(torch.arange(300.0), torch.arange(400.0), indexing="ij")
    pattern = torch.stack([(torch.sin(yy / 9) + torch.cos(xx / 13)) * 60 + 128, yy / 300 * 255, xx / 400 * 255])
    image = pattern.clamp(0, 255).to(torch.uint8)  # [3, 300, 400]
    boxes = [(0, 0, 300, 300), (37, 91, 250, 230), (120, 10, 150, 190), (5, 150, 290, 245)]
    for size in (64, 112):
        ours = _resized_crops([image] * len(boxes), boxes, size)
        pil = torch.stack([TF.pil_to_tensor(TF.resized_crop(TF.to_pil_image(image), *b, [size, size],
                                                             interpolation=TF.InterpolationMode.BICUBIC)).float()
                           for b in boxes])
        assert ours.shape == pil.shape == (len(boxes), 3, size, size)
        assert (ours - pil).abs().mean() < 1.0, size  # grey levels out of 255 (0.29 seen; a 4-pixel shift gives 6.7)


def test_prefetch_to_device_keeps_order_stops_early_and_raises():
    """Batches come out in the loader's order; closing early ends the thread; a loader's or a
    preparation's error is raised in the consumer after the batches before it."""
    import random
    import sys
    import threading
    import time

    from clipscratch.data.prefetch import prefetch_to_device

    def double(b):
        time.sleep(random.Random(int(b["x"][0])).random() * 0.01)
        if b["x"][0] < 0:
            raise RuntimeError("cannot decode")
        return (b["x"] * 2, [b["x"] + 1])

    batches = [{"x": torch.full((3,), float(i))} for i in range(20)]
    interval = sys.getswitchinterval()
    seen = []
    out = []
    for item in prefetch_to_device(iter(batches), double, "cpu", depth=2, threaded=True,
                                   switch_interval=1e-4):
        seen.append(sys.getswitchinterval())  # the GIL changes hands every 0.1 ms while the thread runs
        out.append(item)
    assert seen == pytest.approx([1e-4] * 20) and sys.getswitchinterval() == interval  # and the interpreter's own afterwards
    assert [b["x"][0].item() for b, _ in out] == list(range(20))
    assert all(torch.equal(m[0], b["x"] * 2) and torch.equal(m[1][0], b["x"] + 1) for b, m in out)
    sequential = list(prefetch_to_device(iter(batches), double, "cpu"))  # the CPU default: no thread
    assert all(torch.equal(a[1][0], b[1][0]) for a, b in zip(out, sequential))

    before = threading.active_count()
    for i, (batch, _) in enumerate(prefetch_to_device(iter(batches), double, "cpu", depth=2, threaded=True)):
        if i == 3:
            time.sleep(0.3)  # the thread fills every slot ahead and waits to hand over the next batch
            break  # the generator closes: its thread must end, not hang waiting
    assert threading.active_count() == before and sys.getswitchinterval() == interval

    def failing():
        yield from batches[:5]
        raise ValueError("corrupt shard")

    got = []
    with pytest.raises(ValueError, match="corrupt shard"):
        for batch, _ in prefetch_to_device(failing(), double, "cpu", threaded=True):
            got.append(batch["x"][0].item())
    assert got == [0, 1, 2, 3, 4]
    undecodable = batches[:6] + [{"x": torch.full((3,), -1.0)}] + batches[6:]
    got = []
    with pytest.raises(RuntimeError, match="cannot decode"):
        for batch, _ in prefetch_to_device(iter(undecodable), double, "cpu", threaded=True):
            got.append(batch["x"][0].item())
    assert got == [0, 1, 2, 3, 4, 5] and threading.active_count() == before


def test_fp8_linear_is_the_scaled_product_it_claims_and_close_to_float32():
    """The FP8 linear against an emulation of its own arithmetic (exact: same quantised operands
    and float32 products) and against float32 (e4m3 keeps 3 mantissa bits: relative error per
    value up to 2^-4; over a 256-term product about 2^-4 / sqrt(12) ~ 2%, seen 1.5-3%)."""
    from clipscratch.models.fp8 import E4M3, E5M2, fp8_fits, linear, to_fp8

    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 7, 256, generator=g, requires_grad=True)  # 21 rows: padded to 32 inside, sliced back
    w = (torch.randn(128, 256, generator=g) * 0.05).requires_grad_(True)
    b = torch.randn(128, generator=g, requires_grad=True)
    grad = torch.randn(3, 7, 128, generator=g)
    y = linear(x, w, b, fp8=True)
    y.backward(grad)

    def dq(t, dtype):
        q, s = to_fp8(t, dtype)
        return q.float() * s

    x2, g2 = x.detach().reshape(-1, 256), grad.reshape(-1, 128)
    assert torch.allclose(y.detach().reshape(-1, 128), dq(x2, E4M3) @ dq(w.detach(), E4M3).T + b.detach(), rtol=1e-5, atol=1e-5)
    assert torch.allclose(x.grad.reshape(-1, 256), dq(g2, E5M2) @ dq(w.detach(), E4M3), rtol=1e-5, atol=1e-5)
    assert torch.allclose(w.grad, dq(g2, E5M2).T @ dq(x2, E4M3), rtol=1e-5, atol=1e-5)
    assert torch.allclose(b.grad, g2.sum(0), rtol=1e-6)
    exact = x.detach() @ w.detach().T + b.detach()
    assert 0.001 < _rel(y.detach(), exact) < 0.05
    assert fp8_fits(w) and not fp8_fits(torch.zeros(100, 256))  # a weight of 100 rows: plain F.linear


def test_fp8_model_gradients_point_where_float32_ones_do():
    """Every FP8 projection in a model: the loss within 2% of float32, and each weight gradient
    in nearly the same direction (cosine 0.976-0.99 seen; e5m2 gradients keep 2 mantissa bits,
    so single-step errors of 15-20% are the format's, not a bug; bf16 gives 0.9994). A
    transposed operand or a wrong scale gives cosines near 0."""
    import torch.nn.functional as F

    a, b = _pair()
    b.set_fp8(True)
    images, tokens = _batch(16)
    la, ga = _loss_and_grads(a, (images, tokens))
    lb, gb = _loss_and_grads(b, (images, tokens))
    assert abs(la - lb) < 0.02 * abs(la)
    cosines = [F.cosine_similarity(x.flatten(), y.flatten(), dim=0).item() for x, y in zip(ga, gb) if x.numel() > 1000]
    assert len(cosines) == 22 and min(cosines) > 0.95


@pytest.mark.parametrize("recompute_mlp", [False, True])
def test_text_packed_on_the_host_compiles_once_for_every_caption_length(shared_data, recompute_mlp):
    """The training loop packs each batch on the host (prefetch.to_device with pack_text), so
    the compiled model sees no data-dependent shape: one graph without a break (fullgraph), with
    N and T dynamic from the start, for batches of real captions of any lengths; the loss and
    gradients are the padded batch's. The same with the MLPs recomputed in the backward."""
    from torch._dynamo.testing import CompileCounterWithBackend

    from clipscratch.models.packing import pack_tokens

    tokens = _flickr_tokens(shared_data, n=64)
    batches = [tokens[i::4] for i in range(4)]  # four batches of 16 with different longest and total lengths
    shapes = {(tuple(p.layout.shape), p.ids.shape[0]) for p in map(pack_tokens, batches)}
    assert len(shapes) == 4
    a, b = _pair()
    b.set_mlp_recompute(recompute_mlp)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(b, backend=counter, fullgraph=True)
    torch._dynamo.reset()
    for i, text in enumerate(batches):
        images = torch.randn(len(text), 3, 32, 32, generator=torch.Generator().manual_seed(i))
        la, ga = _loss_and_grads(a, (images, text))
        lb, gb = _loss_and_grads(compiled, (images, pack_tokens(text)))
        assert abs(la - lb) <= 1e-5 * abs(la)
        assert max(_rel(y, x) for x, y in zip(ga, gb) if x.abs().max() > 0) <= 1e-4
    assert counter.frame_count == 1


@pytest.mark.parametrize("size", [32, 35])
def test_patch_embedding_as_a_matrix_product_equals_the_convolution(size):
    """patchify computes conv1 as a matrix product: the convolution's numbers (float64: to
    rounding), also where the image size leaves pixels over (the convolution drops them)."""
    torch.manual_seed(0)
    vit = clipscratch.create_model("tiny-vit").visual.double()
    images = torch.randn(3, 3, size, size, dtype=torch.float64)
    conv = vit.conv1(images).flatten(2).transpose(1, 2)  # [B, N, width]
    assert vit.patchify(images).shape == conv.shape
    assert _rel(vit.patchify(images), conv) <= 1e-14


def test_gpu_decode_crops_of_photos_of_many_sizes_equal_each_photo_cropped_alone(shared_data):
    """A batch of real Flickr8k photos of several sizes is cut into one canvas per shrink factor
    and sampled together (_sample_crops); each crop equals its box cut out of the photo and
    resized alone (sampling stops at the box's edges, never blending in the canvas' zeros), and
    the batch keeps its order."""
    import glob
    import os

    from torchvision.io import ImageReadMode, decode_jpeg

    from clipscratch.data.gpu_decode import _resized_crops

    by_size = {}
    for path in sorted(glob.glob(os.path.join(shared_data, "flickr8k-1000", "images", "*.jpg"))):
        with Image.open(path) as im:
            by_size.setdefault(im.size, path)
    wanted = [(500, 375), (200, 150), (500, 333), (150, 200)]  # (width, height), four sizes the folder holds
    images = [decode_jpeg(torch.frombuffer(bytearray(open(by_size[s], "rb").read()), dtype=torch.uint8),
                          mode=ImageReadMode.RGB) for s in wanted]
    # shrink factors 2, 1, 2, 1 at size 112; the last box is enlarged (100 x 110 -> 112) and smaller than its canvas
    boxes = [(36, 90, 250, 230), (10, 5, 120, 130), (20, 40, 240, 250), (60, 20, 100, 110)]
    together = _resized_crops(images, boxes, 112)
    alone = torch.cat([_resized_crops([im[:, t : t + h, l : l + w]], [(0, 0, h, w)], 112)
                       for im, (t, l, h, w) in zip(images, boxes)])
    assert together.shape == (4, 3, 112, 112)
    # float32 sampling coordinates differ by ~1e-7 of the canvas width (<= 500 px) between the two, and a
    # photo's sharpest edge is at most 255 grey levels a pixel: at most ~0.02. A one-pixel shift: tens.
    assert (together - alone).abs().max() < 2e-2


def test_packed_text_reaches_the_full_context_on_hateful_memes_text(shared_data):
    """Web-like text: Hateful Memes captions of every length, the longest cut at the full
    77-token context, packed on the host (pack_tokens) give the padded batch's features
    (float64: to rounding), positions up to the last one included."""
    import os

    from clipscratch.data.captions import read_table
    from clipscratch.models.packing import pack_tokens

    captions = [c for r in read_table(os.path.join(shared_data, "hateful-memes-text", "train.jsonl")) for c in r.captions]
    tokens = clipscratch.tokenize(captions, truncate=True)
    lengths = tokens.argmax(-1) + 1
    order = lengths.argsort()
    batch = tokens[torch.cat([order[:20], order[-20:]])]  # the shortest and the longest, five of them 77 tokens
    packed = pack_tokens(batch)
    assert packed.layout.shape == (40, 77) and int(packed.positions.max()) == 76
    a, _ = _pair()
    a = a.double()
    with torch.no_grad():
        assert _rel(a.encode_text(packed), a.encode_text(batch)) <= 1e-12


@pytest.mark.parametrize("source", ["flickr8k", "hateful-memes"])
def test_packing_filled_for_cuda_graphs_changes_no_feature_loss_or_gradient(shared_data, source):
    """cuda_graphs=true packs with bucket=256: the sequence filled to a multiple of 256 tokens
    by one-token rows of their own, T the context's 77 whatever the longest caption (Flickr8k's
    are shorter, Hateful Memes reaches 77). The captions' features, the loss and
    every gradient are the unfilled packing's: float64, exact to rounding (1e-12); fillers
    leaking into a caption (attention across rows, or a pooled filler) change them at order 1."""
    import os

    from clipscratch.data.captions import read_table
    from clipscratch.models.packing import pack_tokens

    if source == "flickr8k":
        tokens = _flickr_tokens(shared_data)
    else:
        captions = [c for r in read_table(os.path.join(shared_data, "hateful-memes-text", "train.jsonl")) for c in r.captions]
        every = clipscratch.tokenize(captions, truncate=True)
        order = (every.argmax(-1) + 1).argsort()
        tokens = every[torch.cat([order[:24], order[-24:]])]  # the shortest and the longest, several at 77 tokens
    plain, filled = pack_tokens(tokens), pack_tokens(tokens, bucket=256, context_length=77)
    B, (_, T) = len(tokens), plain.layout.shape
    N, fillers = plain.ids.shape[0], filled.ids.shape[0] - plain.ids.shape[0]
    assert filled.ids.shape[0] % 256 == 0 and 0 <= fillers < 256
    assert filled.layout.shape == (B + 256, 77) and (T == 77) == (source != "flickr8k")
    assert filled.starts.shape == (B + 257,) and int(filled.starts[-1]) == N + fillers
    assert torch.equal(filled.ends, plain.ends) and torch.equal(filled.ids[:N], plain.ids)
    assert (filled.positions[N:] == 0).all() and torch.equal(filled.positions[:N], plain.positions)
    a, _ = _pair()
    a = a.double()
    images = torch.randn(B, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert _rel(a.encode_text(filled), a.encode_text(plain)) <= 1e-12
    la, ga = _loss_and_grads(a, (images, plain))
    lb, gb = _loss_and_grads(a, (images, filled))
    assert abs(la - lb) <= 1e-12 * abs(la)
    errors = {n: _rel(y, x) for (n, _), x, y in zip(a.named_parameters(), ga, gb) if x.abs().max() > 0}
    assert max(errors.values()) <= 1e-12, sorted(errors.items(), key=lambda kv: -kv[1])[:3]


def test_packed_text_longer_than_the_context_is_refused_in_one_line():
    from clipscratch.errors import TextTooLongError
    from clipscratch.models.packing import pack_tokens

    a, _ = _pair()
    long = clipscratch.tokenize(["word " * 78], context_length=80, truncate=True)  # 80 tokens with start and end
    with pytest.raises(TextTooLongError, match="a caption has 80 tokens, more than this model's context_length=77"):
        a.encode_text(pack_tokens(long))
    with pytest.raises(TextTooLongError, match="a caption has 80 tokens"):  # filled for CUDA graphs too
        a.encode_text(pack_tokens(long, bucket=256, context_length=77))


def test_text_packed_inside_a_compiled_model_gives_the_eager_features():
    """A plain [B, L] batch given to a compiled model that packs it itself (CLIP.set_text_packing;
    train.py packs on the host instead): torch.compile traces the packing; fp32 rounding apart,
    the eager features."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = clipscratch.create_model("tiny-vit").eval()
    model.set_text_packing(True)
    images, tokens = _batch()
    eager = model(images, tokens)
    compiled = torch.compile(model)(images, tokens)
    torch.testing.assert_close(compiled.text_features, eager.text_features, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(compiled.image_features, eager.image_features, rtol=1e-5, atol=1e-6)
    torch._dynamo.reset()
