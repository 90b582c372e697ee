"""Correctness of the speed options on a GPU, in one run (prints a table; raw JSON to $OUT):

1. packed text == padded text (fp32, TF32 off, ViT-B/32 random init, real Flickr8k captions), and in
   bf16 as close to fp32 as the padded batch, attended by flash attention's varlen kernel and by
   SDPA's memory-efficient kernel in the padded layout, also when filled for CUDA graphs
   (bucket=256: one-token rows and empty rows in the kernel's cu_seqlens);
2. gradient caching with patch dropout == the big batch with the same dropped patches (the CUDA
   generator replayed, not only the CPU one);
3. the FP8 linear == its own emulation (quantised operands, float32 products);
4. attention by SDPA's memory-efficient kernel first for short sequences (CLIP.set_attention_kernel's
   default) == SDPA's own pick, in fp32 to rounding and in bf16 as close to fp32, and the kernels
   each one runs;
5. the one-pass backward kernels ("fused backward", as train.py runs them with compile=true): each
   MLP's bias gradient computed in the pass of its hidden gradient (models/bias_activation.py,
   CLIP.set_fused_activation) and each attention's q/k/v bias gradient in the pass that gathers the
   heads' gradients (models/qkv_projection.py, CLIP.set_fused_qkv) == autograd's two passes: fp32
   features and gradients of both towers to rounding, bf16 as far from fp32 under both, eager and
   compiled, and the Triton kernels in the profile;
6. the compiled fp32 step == the eager one with packed captions of two lengths (one graph for both),
   with the fused backward (also as CUDA graphs), with padded text (with and without it) and without
   dynamic shapes;
   the text tower, the image tower and packed attention compiled alone; and with FP8 linears
   ("compiled step fp8"), compiled with and without the fused backward against eager FP8;
7. the text tower on a side stream beside the image tower ("text stream": CLIP.set_text_stream, as
   train.py's text_stream=true) == one stream: the first step's features and gradients and the
   weights after four AdamW steps, fp32 and bf16, eager and with the towers compiled apart, and a
   gradient-caching step;
8. the one-pass backward kernels' FP8 copies ("fp8 kernel copies", bench/fp8_ceiling.py's own-kernel
   recipes) against torch's rounding to e5m2, their maxima, and their bf16 outputs beside them;
9. nvImageCodec's hardware decoder (when installed) == PIL's decode of real photos, to a few grey
   levels, the same pixels again after its buffers were reused for other images, and its rate on
   256-pixel JPEGs.

    python bench/gpu_checks.py --captions ../shared/data/flickr8k-captions/Flickr8k.token.txt --photos DIR [--only "packed text"]
"""
import argparse
import glob
import io
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import clipscratch  # noqa: E402
from clipscratch.loss import ClipLoss  # noqa: E402
from clipscratch.train.step import grad_cache_step  # noqa: E402


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def features_and_grads(model, images, text, bf16, tower):
    """One forward and backward of the CLIP loss (bf16 autocast or fp32): ``tower``'s ("image",
    "text" or "both") features in fp32 and the gradients of its parameters, flattened."""
    model.zero_grad()
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
        out = model(images, text)
        ClipLoss()(*out).backward()
    features, params = {"image": (out.image_features, model.visual), "text": (out.text_features, model.text),
                        "both": (torch.cat([out.image_features, out.text_features]), model)}[tower]
    return features.detach().float(), torch.cat([p.grad.flatten() for p in params.parameters()])


def vit_b32_and_batch(seed, n):
    """A ViT-B/32 initialised from ``seed`` on the GPU, n random images and n short captions."""
    torch.manual_seed(seed)
    model = clipscratch.create_model("ViT-B-32").cuda()
    images = torch.randn(n, 3, 224, 224, device="cuda")
    tokens = clipscratch.tokenize([f"a photo of {i} dogs" for i in range(n)]).cuda()
    return model, images, tokens


def packed_vs_padded(captions_path):
    """fp32: packed (attended in the padded layout) against padded, exact to rounding. bf16: packed
    on the host, attended by flash's varlen kernel and by SDPA's memory-efficient kernel, plain and
    filled for CUDA graphs (bucket=256), against fp32: the packed path's error must be the padded
    path's (bf16 rounding), not more."""
    from clipscratch.data.captions import read_table
    from clipscratch.models.packing import pack_tokens, uses_flash_varlen

    captions = [c for r in read_table(captions_path) for c in r.captions][:512]
    tokens = clipscratch.tokenize(captions, truncate=True).cuda()
    packed = pack_tokens(tokens.cpu()).to("cuda")
    filled = pack_tokens(tokens.cpu(), bucket=256).to("cuda")
    torch.manual_seed(0)
    model = clipscratch.create_model("ViT-B-32").cuda()
    images = torch.randn(len(tokens), 3, 224, 224, device="cuda")

    def run(text, bf16):
        return features_and_grads(model, images, text, bf16, "text")

    f32, g32 = run(tokens, False)
    f16, g16 = run(tokens, True)
    results = {"bf16_uses_flash_varlen": uses_flash_varlen(images.bfloat16()),
               "bf16_padded_features_rel_err_vs_fp32": rel(f16, f32), "bf16_padded_grads_rel_err_vs_fp32": rel(g16, g32)}
    for kernel in ("varlen", "efficient"):
        model.set_text_packing(False, kernel)
        fp, gp = run(packed, False)  # fp32: varlen runs in half precision only, so the padded layout's kernel
        fh, gh = run(packed, True)
        ff, gf = run(filled, True)
        results.update({f"{kernel}_fp32_features_rel_err": rel(fp, f32), f"{kernel}_fp32_grads_rel_err": rel(gp, g32),
                        f"{kernel}_bf16_features_rel_err_vs_fp32": rel(fh, f32), f"{kernel}_bf16_grads_rel_err_vs_fp32": rel(gh, g32),
                        f"{kernel}_bf16_filled_features_rel_err_vs_fp32": rel(ff, f32),
                        f"{kernel}_bf16_filled_grads_rel_err_vs_fp32": rel(gf, g32)})
    model.set_text_packing(False)
    return results


def attention_kernels(seeds=3):
    """ViT-B/32 (50 image tokens; 77-token text) forward and backward with the attention kernel
    "auto" (SDPA's memory-efficient kernel first up to 64 tokens) against "sdpa" (SDPA's own
    pick): fp32 features and gradients equal to rounding, bf16 as far from fp32 under both (for
    ``seeds`` inits and batches); and the attention kernels each runs, from the profiler."""
    from torch.profiler import ProfilerActivity, profile

    def run(model, images, tokens, kernel, bf16):
        model.set_attention_kernel(kernel)
        return features_and_grads(model, images, tokens, bf16, "image")

    def kernels(*args):
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            run(*args, True)
            torch.cuda.synchronize()
        names = {e.key for e in prof.key_averages()}
        return sorted(n[:60] for n in names if any(w in n.lower() for w in ("fmha", "sdpa", "flash", "attention")))

    results = {}
    for seed in range(seeds):
        model, images, tokens = vit_b32_and_batch(seed, 256)
        (ref, ref_g), (auto, auto_g) = (run(model, images, tokens, k, False) for k in ("sdpa", "auto"))
        for kernel in ("sdpa", "auto"):
            f16, g16 = run(model, images, tokens, kernel, True)
            results.setdefault(f"{kernel}_bf16_features_rel_err_vs_fp32", []).append(rel(f16, ref))
            results.setdefault(f"{kernel}_bf16_image_grads_rel_err_vs_fp32", []).append(rel(g16, ref_g))
        results.setdefault("fp32_features_rel_err", []).append(rel(auto, ref))
        results.setdefault("fp32_image_grads_rel_err", []).append(rel(auto_g, ref_g))
    results.update({f"{k}_kernels": kernels(model, images, tokens, k) for k in ("sdpa", "auto")})
    return results


def grad_cache_with_patch_dropout():
    torch.manual_seed(0)
    model = clipscratch.create_model("ViT-B-32", vision={"patch_dropout": 0.5}).cuda().train()
    images = torch.randn(64, 3, 224, 224, device="cuda")
    tokens = clipscratch.tokenize([f"caption {i} of a batch" for i in range(64)]).cuda()
    micro = [(images[:32], tokens[:32]), (images[32:], tokens[32:])]
    torch.cuda.manual_seed(7)
    loss = grad_cache_step(model, micro, ClipLoss(), lambda l: l.backward())
    cached = torch.cat([p.grad.flatten() for p in model.parameters()])
    model.zero_grad()
    torch.cuda.manual_seed(7)  # the reference: the same dropped patches, one backward over both halves
    outs = [model(i, t) for i, t in micro]
    ref = ClipLoss()(torch.cat([o.image_features for o in outs]), torch.cat([o.text_features for o in outs]), outs[-1].scale)
    ref.backward()
    full = torch.cat([p.grad.flatten() for p in model.parameters()])
    return {"loss_diff": abs(loss - ref.item()), "grads_rel_err": rel(cached, full)}


def fp8_vs_emulation():
    from clipscratch.models.fp8 import E4M3, linear, to_fp8

    x = torch.randn(4096, 768, device="cuda")
    w = torch.randn(3072, 768, device="cuda") * 0.03
    y = linear(x, w, None, fp8=True).float()
    def dq(t):
        q, s = to_fp8(t, E4M3)
        return q.float() * s

    ref = dq(x) @ dq(w).T
    return {"fp8_vs_emulation_rel_err": rel(y, ref), "fp8_vs_fp32_rel_err": rel(y, x @ w.T)}


def fp8_kernel_copies():
    """The one-pass backward kernels' FP8 copies (their ``fp8=(scale, dtype)`` option, bench/fp8_ceiling.py)
    against torch's rounding of output / scale to e5m2, saturated, and their maxima against torch's, at
    ViT-B/16's shapes (M = 256 x 197) in bf16, the scale putting the largest values past the format's
    range. gather_heads copies its bf16 input, so its copy and maximum are exact; bias_activation's kernel
    converts its float32 result before the bf16 rounding, so its copy is within one FP8 step of the bf16
    output's and its maximum within bf16's rounding. Its bf16 outputs beside the FP8 ones are compared
    with the kernel's without them."""
    from clipscratch.models import bias_activation as ba, qkv_projection as qp

    e5m2, top = torch.float8_e5m2, torch.finfo(torch.float8_e5m2).max
    torch.manual_seed(0)
    results = {}
    grad = torch.randn(256 * 197, 3072, device="cuda", dtype=torch.bfloat16) * 1e-3
    h = torch.randn(256 * 197, 3072, device="cuda", dtype=torch.bfloat16)
    bias = torch.randn(3072, device="cuda")
    qkv = [torch.randn(256, 12, 197, 64, device="cuda", dtype=torch.bfloat16) * 1e-3 for _ in range(3)]
    for name, run in (("bias_activation", lambda fp8: ba.launch(ba.bias_activation_backward_kernel, grad, h, bias, False,
                                                                 fp8=fp8)),
                      ("gather_heads", lambda fp8: qp.launch(qp.gather_heads_kernel, *qkv, fp8=fp8))):
        out, out_bias = run(None)
        scale = out.float().abs().max() / (2 * top)
        same, same_bias, copy, amax = run((scale, e5m2))
        want = (out.float() * (1 / scale)).clamp(-top, top)  # the kernels multiply by the scale's inverse
        step = torch.exp2(want.abs().clamp_min(2.0 ** -14).log2().floor() - 2)  # e5m2: 2 mantissa bits
        results[name] = {"output_equal": bool(torch.equal(same, out)), "output_rel_diff": rel(same, out),
                         "bias_grad_rel_diff": rel(same_bias, out_bias),
                         "copy_mismatches": int((copy.view(torch.uint8) != want.to(e5m2).view(torch.uint8)).sum()),
                         "copy_within_one_step": bool(((copy.float() - want).abs() <= step).all()),
                         "saturated": int((want.abs() == top).sum()),
                         "max_rel_diff": float((amax - out.float().abs().max()).abs() / amax)}
    return results


def nvimgcodec_check(photos_dir):
    from PIL import Image

    from clipscratch.data.gpu_decode import _decode_nvimgcodec, nvimgcodec_available
    from clipscratch.data.images import encode_jpeg

    if not nvimgcodec_available():
        return {"nvimgcodec": "not installed"}
    paths = sorted(glob.glob(os.path.join(photos_dir, "*.jpg")))[:200]
    raws = [open(p, "rb").read() for p in paths]
    jpegs = [torch.frombuffer(bytearray(r), dtype=torch.uint8) for r in raws]
    decoded = _decode_nvimgcodec(jpegs, "cuda")
    diffs = [(d.float().cpu() - torch.from_numpy(__import__("numpy").asarray(Image.open(io.BytesIO(r)).convert("RGB"))).permute(2, 0, 1).float()).abs().mean().item()
             for d, r in zip(decoded, raws) if d is not None]
    first = [None if d is None else d.clone() for d in decoded]
    other = [torch.frombuffer(bytearray(encode_jpeg(Image.new("RGB", (64 + i, 80), (i, 2 * i, 90)))), dtype=torch.uint8)
             for i in range(len(jpegs))]
    _decode_nvimgcodec(other, "cuda")  # refills the buffers with other images of other sizes
    again = _decode_nvimgcodec(jpegs, "cuda")  # and back: the reused buffers give the same pixels
    reuse_diff = max((a.int() - b.int()).abs().max().item() for a, b in zip(first, again) if a is not None)
    small = [torch.frombuffer(bytearray(encode_jpeg(Image.open(p).convert("RGB").resize((256, 256)))), dtype=torch.uint8) for p in paths]
    batch = (small * 3)[:512]
    for _ in range(2):
        _decode_nvimgcodec(batch, "cuda")
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(5):
        _decode_nvimgcodec(batch, "cuda")
    torch.cuda.synchronize()
    rate = 5 * len(batch) / (time.perf_counter() - t)
    return {"nvimgcodec_decoded": sum(d is not None for d in decoded), "of": len(paths),
            "mean_abs_diff_vs_pil": sum(diffs) / len(diffs), "max_diff_after_buffer_reuse": reuse_diff, "max_image_diff": max(diffs), "decodes_per_s_256px": rate}


def set_fused_backward(model, enabled):
    """Both one-pass backward kernels on or off, as train.py's fused_activation and fused_qkv."""
    model.set_fused_activation(enabled)
    model.set_fused_qkv(enabled)


def fused_backward(seeds=3):
    """ViT-B/32 forward and backward (padded text, so that both towers' attention takes the q/k/v
    kernel) with the one-pass bias gradients (fused) against autograd's (plain): fp32 features and
    gradients of both towers equal to rounding, bf16 as far from fp32 under both, eager and
    compiled (the first seed); the kernels run (the compiled fp32 step: compiled_step)."""
    from torch.profiler import ProfilerActivity, profile

    def both_towers(model, images, text, fused, bf16, compiled=False):
        set_fused_backward(model, fused)
        if not compiled:
            return features_and_grads(model, images, text, bf16, "both")
        torch._dynamo.reset()
        return torch.compile(features_and_grads)(model, images, text, bf16, "both")

    results = {}
    for seed in range(seeds):
        model, images, tokens = vit_b32_and_batch(seed, 128)
        ref, ref_g = both_towers(model, images, tokens, False, False)
        got, got_g = both_towers(model, images, tokens, True, False)
        results.setdefault("fp32_features_rel_err", []).append(rel(got, ref))
        results.setdefault("fp32_grads_rel_err", []).append(rel(got_g, ref_g))
        for compiled in (False, True) if seed == 0 else (False,):
            for fused in (False, True):
                f16, g16 = both_towers(model, images, tokens, fused, True, compiled)
                name = ("compiled_" if compiled else "") + ("fused" if fused else "plain")
                results.setdefault(f"{name}_bf16_features_rel_err_vs_fp32", []).append(rel(f16, ref))
                results.setdefault(f"{name}_bf16_grads_rel_err_vs_fp32", []).append(rel(g16, ref_g))
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        both_towers(model, images, tokens, True, True)
        torch.cuda.synchronize()
    results["fused_kernels"] = sorted({e.key[:60] for e in prof.key_averages()
                                       if any(k in e.key for k in ("bias_activation", "gather_heads", "gelu"))})
    set_fused_backward(model, False)
    return results


def compiled_step(captions_path, fp8=False):
    """The compiled fp32 ViT-B/32 step against eager, on two packed batches of real captions
    (two token counts, one graph): loss, both towers' features and the gradients of each tower,
    for the step as training compiles it, with the fused backward (set_fused_backward; also replayed
    as CUDA graphs), with padded text (with and without it), and compiled without dynamic shapes;
    then the text tower, the image tower and packed attention compiled alone, to place an error
    that the whole step shows. ``fp8``: the linears in FP8 (models/fp8.py) on both sides, compiled
    with and without the fused MLP backward (what fp8=true trains with compile=true; the q/k/v
    kernel is not used with FP8)."""
    from clipscratch.data.captions import read_table
    from clipscratch.models.packing import pack_tokens, packed_attention

    captions = [c for r in read_table(captions_path) for c in r.captions]
    model, images, _ = vit_b32_and_batch(0, 128)
    texts = [clipscratch.tokenize(b, truncate=True).cuda() for b in (captions[:128], captions[5000:5128])]
    packs = [pack_tokens(t.cpu()).to("cuda") for t in texts]
    groups = {"visual": list(model.visual.parameters()), "text": list(model.text.parameters()), "logit_scale": [model.logit_scale]}

    def step(i, t):
        out = model(i, t)
        return ClipLoss()(*out), out.image_features, out.text_features

    def run(fn, text):  # loss, features and gradients by tower, fp32
        model.zero_grad()
        loss, img, txt = fn(images, text)
        loss.backward()
        grads = {g: torch.cat([p.grad.flatten() for p in ps]) for g, ps in groups.items()}
        return {"loss": loss.detach().reshape(1), "image_features": img.detach(), "text_features": txt.detach(), **grads}

    def errors(got, ref):
        return {k: round(rel(got[k], ref[k]), 9) for k in ref}

    results = {"batch_tokens": [int(p.ids.numel()) for p in packs]}
    set_fused_backward(model, False)
    if fp8:  # FP8's own error, the scale for a compiled-vs-eager difference: quantisation flips a value near
        # a rounding boundary by a whole FP8 step wherever a product's order moves its input by one fp32 ulp
        fp32 = [run(step, p) for p in packs]
    model.set_fp8(fp8)
    eager = {"packed": [run(step, p) for p in packs], "padded": [run(step, t) for t in texts]}
    if fp8:
        results["eager_fp8_vs_fp32"] = [errors(a, b) for a, b in zip(eager["packed"], fp32)]
        # the scale for compiled vs eager: eager again with the images moved by about one fp32 ulp, as a
        # different order of the same sums moves values; the few values it flips to the next FP8 step
        # change what follows by far more than an ulp, which flips more
        exact = images.clone()
        images.mul_(1 + 2 ** -23)
        results["eager_fp8_images_moved_one_ulp"] = [errors(run(step, p), e) for p, e in zip(packs, eager["packed"])]
        images.copy_(exact)
    results["eager_packed_vs_padded"] = [errors(a, b) for a, b in zip(eager["packed"], eager["padded"])]
    results["eager_repeat"] = errors(run(step, packs[0]), eager["packed"][0])  # the GPU's own run-to-run floor
    variants = (("packed", "packed", {}, False), ("packed_fused", "packed", {}, True))
    if not fp8:
        variants += (("padded", "padded", {}, False), ("padded_fused", "padded", {}, True),
                     ("packed_static", "packed", {"dynamic": False}, False),
                     ("packed_fused_cuda_graphs", "packed", {"mode": "reduce-overhead"}, True))
    for name, text, kwargs, fused in variants:
        torch._dynamo.reset()
        set_fused_backward(model, fused)
        fn = torch.compile(step, **kwargs)
        batches = packs if text == "packed" else texts
        try:
            results[f"compiled_{name}"] = [errors(run(fn, b), eager[text][i]) for i, b in enumerate(batches)]
        except Exception as e:
            results[f"compiled_{name}"] = f"{type(e).__name__}: {str(e)[:200]}"
    set_fused_backward(model, False)
    model.set_fp8(False)
    if fp8:
        return results

    # the parts alone, compiled vs eager, on the first packed batch
    def part(fn, inputs, params):
        outs = []
        for f in (fn, torch.compile(fn)):
            torch._dynamo.reset()
            for x in inputs:
                x.grad = None
            for p in params:
                p.grad = None
            y = f(*inputs)
            y.backward(torch.ones_like(y) / y.numel() ** 0.5)
            outs.append(torch.cat([y.detach().flatten()] + [t.grad.flatten() for t in list(inputs) + params]))
        n = y.numel()
        return {"output": round(rel(outs[1][:n], outs[0][:n]), 9), "grads": round(rel(outs[1][n:], outs[0][n:]), 9)}

    results["text_tower_alone"] = part(lambda: model.encode_text(packs[0]), [], list(model.text.parameters()))
    results["image_tower_alone"] = part(lambda: model.encode_image(images), [], list(model.visual.parameters()))
    torch.manual_seed(1)
    qkv = torch.randn(packs[0].ids.numel(), 3 * 512, device="cuda", requires_grad=True)
    results["packed_attention_alone"] = part(lambda x: packed_attention(x, 8, packs[0]), [qkv], [])
    return results


def text_stream(captions_path, steps=4):
    """The text tower on a side stream (CLIP.set_text_stream, models/tower_stream.py) against one
    stream: ViT-B/32 batch 128, packed real captions, fp32 and bf16, eager and with the towers
    compiled apart (train.py's text_stream=true with compile=true), the side stream at normal and
    high priority: the features and gradients of the first step and the weights after ``steps``
    fused AdamW steps on different batches (a missing synchronisation shows as a difference, which
    the same kernels on the same inputs do not make); and a gradient-caching step (two micro-batches)."""
    from clipscratch.data.captions import read_table
    from clipscratch.models import tower_stream
    from clipscratch.models.packing import pack_tokens

    captions = [c for r in read_table(captions_path) for c in r.captions]
    packs = [pack_tokens(clipscratch.tokenize(captions[i * 128:(i + 1) * 128], truncate=True)).to("cuda")
             for i in range(steps)]
    torch.manual_seed(0)
    images = [torch.randn(128, 3, 224, 224, device="cuda") for _ in range(steps)]

    def model_with(priority, compiled):
        model = vit_b32_and_batch(0, 1)[0].train()
        model.set_text_packing(True)
        model.set_text_stream(priority is not None, priority or 0)
        model.set_fused_qkv(True)  # as train.py: the one-pass kernels (fused_activation with compile)
        model.set_fused_activation(compiled)
        if compiled:
            model.compile_towers()
        return model

    def train(priority, bf16, compiled):
        model = model_with(priority, compiled)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
        first = None
        for i in range(steps):
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
                out = model(images[i], packs[i])
                loss = ClipLoss()(*out)
            loss.backward()
            if first is None:
                first = (torch.cat([out.image_features.detach().float(), out.text_features.detach().float()]),
                         torch.cat([p.grad.flatten() for p in model.parameters()]))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return {"features": first[0], "grads": first[1], "weights": torch.cat([p.detach().flatten() for p in model.parameters()])}

    results = {}
    for bf16 in (False, True):
        for compiled in (False, True):
            torch._dynamo.reset()
            ref = train(None, bf16, compiled)
            name = ("bf16" if bf16 else "fp32") + ("_compiled_towers" if compiled else "_eager")
            results[f"{name}_one_stream_again"] = {k: rel(v, ref[k]) for k, v in train(None, bf16, compiled).items()}
            for priority in (0, -1):
                got = train(priority, bf16, compiled)
                results[f"{name}_side_stream_priority{priority}"] = {k: rel(v, ref[k]) for k, v in got.items()}
    torch._dynamo.reset()

    def cached(priority):  # gradient caching over two micro-batches (accum_steps=2)
        model = model_with(priority, False)
        grad_cache_step(model, [(images[0], packs[0]), (images[1], packs[1])], ClipLoss(), lambda l: l.backward())
        return torch.cat([p.grad.flatten() for p in model.parameters()])

    results["fp32_grad_cache_side_stream"] = rel(cached(0), cached(None))
    results["side_streams_made"] = len(tower_stream._STREAMS)  # 0 would mean forward never left the one stream
    return results


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--captions", required=True)
    p.add_argument("--photos", required=True)
    p.add_argument("--only", nargs="+", help="run only these checks, by the names the table prints")
    args = p.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    results = {}
    for name, fn in (("packed text", lambda: packed_vs_padded(args.captions)), ("grad cache + patch dropout", grad_cache_with_patch_dropout),
                     ("fp8 linear", fp8_vs_emulation), ("attention kernel", attention_kernels),
                     ("fused backward", fused_backward), ("text stream", lambda: text_stream(args.captions)),
                     ("compiled step", lambda: compiled_step(args.captions)),
                     ("compiled step fp8", lambda: compiled_step(args.captions, fp8=True)),
                     ("fp8 kernel copies", fp8_kernel_copies), ("nvimgcodec", lambda: nvimgcodec_check(args.photos))):
        if args.only and name not in args.only:
            continue
        try:
            results[name] = fn()
        except Exception as e:
            results[name] = {"failed": f"{type(e).__name__}: {str(e)[:300]}"}
        print(f"{name}: {json.dumps(results[name])}", flush=True)
    with open(os.path.join(os.environ.get("OUT", "."), "gpu_checks.json"), "w") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
