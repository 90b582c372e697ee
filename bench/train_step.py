"""Training-step throughput on real caption lengths: clipscratch vs open_clip on one GPU, one run.

    python bench/train_step.py --captions ../shared/data/flickr8k-captions/Flickr8k.token.txt \\
        --models ViT-B-32 --variants open_clip clipscratch:packed clipscratch:trimmed clipscratch:packed:fp8

Every step's captions are a batch of real captions drawn from the file (8 different batches,
rotated), tokenised; the two implementations see the same tokens:
  open_clip            pads every caption to 77 tokens, as its users run it
  clipscratch:packed   each caption costs its own length: packed on the host as the training loop does
                       (models/packing.py; attended in the padded layout by SDPA's memory-efficient kernel,
                       or under @reduce-overhead by flash attention's varlen kernel: packing.attention_kernel)
  clipscratch:trimmed  the batch cut to its longest caption
  clipscratch:77       77 tokens, as open_clip
  ...:fp8              attention and MLP projections in FP8 (models/fp8.py)
  ...:recompute        each MLP's activations computed again in the backward (CLIP.set_mlp_recompute)
  ...:fused            each MLP's bias gradient in the pass of the hidden gradient, not by autograd's own
                       (CLIP.set_fused_activation(True); models/bias_activation.py); on whenever the
                       step is compiled, as train.py does (fused_activation); :fused also turns it on
                       eager (parts 72-78 named it explicitly: there the compiled default was off)
  ...:unfused          without it, compiled too
  ...:noqkv            without the q/k/v projection's one-pass backward (each attention's heads' gradients
                       gathered and its bias gradient summed in one pass: CLIP.set_fused_qkv;
                       models/qkv_projection.py), which every clipscratch row uses otherwise, eager
                       and compiled, as train.py does (fused_qkv)
  ...:attn=KERNEL      packed captions attended by KERNEL (models/packing.py: varlen, efficient, sdpa)
  ...:sdpa             attention (packed captions aside) by SDPA's own pick of backend, as open_clip's
                       (CLIP.set_attention_kernel("sdpa"); the default tries SDPA's memory-efficient
                       kernel first for sequences of up to 64 tokens: layers.sdpa_backends)
  ...:img=BACKEND      the same, with SDPA limited to that backend (cudnn, efficient, flash) in the step
  ...:towers           each tower compiled alone (CLIP.compile_towers), the loss, backward and optimizer
                       eager; compiled rows only
  ...:streams          the text tower on a side CUDA stream (CLIP.set_text_stream, models/tower_stream.py),
                       so that its small kernels (forward, and by autograd's stream rule its backward)
                       can run beside the image tower's; compiled, the towers apart as with :towers
                       (train.py's text_stream=true); :streams-high on a high-priority stream
  ...:tuned            Inductor's coordinate-descent tuning of its own Triton kernels (LayerNorm, GELU,
                       residual adds, reductions: block sizes and warps tried around its heuristic's
                       pick; torch._inductor.config.coordinate_descent_tuning) while the variant compiles
  ...:combo            Inductor's combo kernels: kernels that do not depend on each other (the two towers'
                       LayerNorms, GELUs, residual adds ...) launched as one (torch._inductor.config.
                       combo_kernels, experimental); :combo-bench keeps only those its benchmark finds faster
  ...:fp8delayed       train.py's fp8_delayed=true (CLIP.set_fp8_delayed, models/fp8_delayed.py): the image
                       tower's q/k/v and MLP-in projections in FP8 with delayed scaling; the warm-up steps
                       measure its scales. Parts 111-112 ran the benchmark's own copy of this recipe as
                       :fp8own, at commit 736840f
  ...@eager            without torch.compile (the default compiles the step)
  ...@MODE             compiled in torch.compile's MODE, e.g. @max-autotune-no-cudagraphs (Inductor
                       tries Triton matmul templates with the elementwise work fused into them)
  ...@reduce-overhead  CUDA graphs, as train.py's cuda_graphs=true: packed captions filled to a
                       multiple of 256 tokens (T = 77) so that a few recordings serve every batch
Synthetic images on the GPU, random init, bf16 autocast, fused AdamW, the CLIP loss; model
FLOPs are counted (torch.utils.flop_counter, one forward+backward) on the tokens each variant
really computes (the counting step runs eagerly, where the packed captions' attention is the
padded layout's on a GPU; the flop counter does not see inside flash attention's varlen kernel, so
with attn=varlen the captions' own attention products, under 0.1% of a step, go uncounted). GELU models (ViT-B-32,
ViT-B-16, ViT-L-14) on both sides.
"""
import argparse
import contextlib
import json
import os
import statistics
import sys
import time

import torch
import torch._inductor.config as inductor_config
import torch.nn.functional as F
from torch._dynamo.utils import counters
from torch.nn.attention import sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from clipscratch.models.fp8_delayed import update_scales  # noqa: E402

BATCH = {"ViT-B-32": 512, "ViT-B-16": 256, "ViT-L-14": 128}


def caption_batches(path: str, batch: int, n: int = 8, seed: int = 0):
    """``n`` batches of real captions as token tensors [batch, 77] (CPU), and the length statistics."""
    import random

    import clipscratch
    from clipscratch.data.captions import read_table

    captions = [c for r in read_table(path) for c in r.captions]
    rng = random.Random(seed)
    batches = [clipscratch.tokenize(rng.sample(captions, batch), truncate=True) for _ in range(n)]
    lengths = clipscratch.tokenize(captions, truncate=True).argmax(-1) + 1
    maxima = [int((b.argmax(-1) + 1).max()) for b in [clipscratch.tokenize(rng.sample(captions, batch), truncate=True)
                                                      for _ in range(200)]]
    stats = {"file": os.path.basename(path), "captions": len(captions), "mean_tokens": float(lengths.float().mean()),
             "batch_max_median": statistics.median(maxima), "batch_max_min": min(maxima), "batch_max_max": max(maxima)}
    return batches, stats


def clip_loss(img, txt, scale):
    img, txt = F.normalize(img, dim=-1), F.normalize(txt, dim=-1)
    logits = scale * img @ txt.T
    labels = torch.arange(img.shape[0], device=img.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


SDPA_BACKENDS = {"cudnn": "CUDNN_ATTENTION", "efficient": "EFFICIENT_ATTENTION", "flash": "FLASH_ATTENTION"}


def image_backend(variant: str):
    """The SDPA backend of ``img=BACKEND``, the only one the step's forward may use (the model then
    leaves the pick to SDPA, which this limits); None without it."""
    from torch.nn.attention import SDPBackend

    name = next((o.split("=", 1)[1] for o in variant.split(":") if o.startswith("img=")), None)
    return getattr(SDPBackend, SDPA_BACKENDS[name]) if name else None


def build(variant: str, name: str, compiled: bool = False):
    """(model, its logit scale as a function, its text mode) for ``variant``; ``compiled``: as
    train.py compiles it (the fused MLP backward on: train/config.py fused_activation); the q/k/v
    projection's one-pass backward is on eager and compiled, as in train.py (fused_qkv)."""
    impl, *options = variant.split(":")
    if impl == "open_clip":
        import open_clip

        model = open_clip.create_model(name)
        return model, (lambda: model.logit_scale.exp().clamp(max=100)), "77"
    import clipscratch

    model = clipscratch.create_model(name)
    mode = options[0] if options else "packed"
    kernel = next((o.split("=", 1)[1] for o in options if o.startswith("attn=")), "auto")
    model.set_text_packing(mode == "packed", kernel)
    model.set_fp8("fp8" in options)
    model.set_mlp_recompute("recompute" in options)
    model.set_fused_activation(("fused" in options or compiled) and "unfused" not in options)
    model.set_fused_qkv("noqkv" not in options)
    model.set_attention_kernel("sdpa" if "sdpa" in options or any(o.startswith("img=") for o in options) else "auto")
    model.set_text_stream("streams" in options or "streams-high" in options, priority=-1 if "streams-high" in options else 0)
    model.set_fp8_delayed("fp8delayed" in options)
    return model, model.scale, mode


def prepare_tokens(tokens: torch.Tensor, mode: str, bucket: int = 0):
    """What the training loop hands the model (on the host, before the copy to the GPU)."""
    if mode == "trimmed":
        return tokens[:, : int((tokens != 0).sum(1).max())]
    if mode == "packed":
        from clipscratch.models.packing import pack_tokens

        return pack_tokens(tokens, bucket)  # as prefetch.to_device with pack_text: no data-dependent shape in the step
    return tokens  # 77 wide


def setup(variant, name, batches, bucket=0, compiled=False):
    """(step(images, tokens), model, optimizer, images, the batches' tokens as the variant takes
    them), on the GPU: one training step, bf16 autocast, fused AdamW."""
    torch.manual_seed(0)
    model, scale_fn, mode = build(variant, name, compiled)
    model = model.cuda().train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    images = torch.randn(batches[0].shape[0], 3, 224, 224, device="cuda")
    tokens = [prepare_tokens(b, mode, bucket).to("cuda") for b in batches]
    backend = image_backend(variant)
    options = variant.split(":")[1:]
    delayed = "fp8delayed" in options
    split = compiled and any(o in options for o in ("towers", "streams", "streams-high"))
    if split:
        model.compile_towers()  # forward runs them; the FLOP count's eager step runs the plain encoders

    through_forward = split or getattr(model, "text_stream", None) is not None

    def towers(images, tokens, plain):
        if plain or not through_forward:  # the step compiled whole; or eager, one stream (the FLOP count)
            return model.encode_image(images), model.encode_text(tokens)
        out = model(images, tokens)  # the compiled towers, the side stream: as train.py's text_stream=true
        return out.image_features, out.text_features  # unit norm (clip_loss normalises again: a few µs)

    def step(images, tokens, plain=False):
        with torch.autocast("cuda", dtype=torch.bfloat16), sdpa_kernel(backend) if backend else contextlib.nullcontext():
            loss = clip_loss(*towers(images, tokens, plain), scale_fn())
        loss.backward()
        if delayed:  # :fp8delayed: this step's maxima become the next step's scales
            update_scales(model)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    step.split = split  # measure() then runs the step itself, its towers compiled
    return step, model, optimizer, images, tokens


def inductor_options(variant: str) -> dict:
    """The Inductor settings a variant's options ask for (:tuned, :combo, :combo-bench), for the compile."""
    options = variant.split(":")[1:]
    patch = {"coordinate_descent_tuning": "tuned" in options}
    if "combo" in options or "combo-bench" in options:
        patch["combo_kernels"] = True
        patch["benchmark_combo_kernel"] = "combo-bench" in options
    return patch


def measure(variant, name, batches, compiled, warmup_rounds, iters, mode=None):
    graphs = compiled and mode == "reduce-overhead"
    step, model, optimizer, images, tokens = setup(variant, name, batches, bucket=256 if graphs else 0, compiled=compiled)
    bs = images.shape[0]

    with FlopCounterMode(display=False) as counter:
        step(images, tokens[0], plain=True)  # one eager step (the optimizer's arithmetic is not counted)
    flops = counter.get_total_flops()  # the first batch's tokens: close to the mean
    run = torch.compile(step, mode=mode) if compiled and not step.split else step
    if graphs:
        recorded = run

        def run(images, tokens):
            torch.compiler.cudagraph_mark_step_begin()  # the last step's graph outputs are done with
            return recorded(images, tokens)
    if graphs:  # a batch shape's first call warms up, its second records: both before the timed replays
        warmup_rounds = max(warmup_rounds, 2)
    t0 = time.perf_counter()
    for _ in range(warmup_rounds):
        for t in tokens:
            run(images, t)
    torch.cuda.synchronize()
    warm_s = time.perf_counter() - t0
    torch.cuda.reset_peak_memory_stats()
    skips = counters["inductor"]["cudagraph_skips"]
    compiles, retries = counters["stats"]["unique_graphs"], torch.cuda.memory_stats()["num_alloc_retries"]
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    calls = []  # the host's time of each call: a few ms where CUDA graphs replay, the whole step where they do not
    for i in range(iters):
        host = time.perf_counter()
        run(images, tokens[i % len(tokens)])
        calls.append((time.perf_counter() - host) * 1000)
    host_ms = sum(calls) / iters  # the host time per call (a full launch queue also makes it step_ms)
    end.record()
    torch.cuda.synchronize()
    ms = start.elapsed_time(end) / iters
    result = {"variant": variant, "model": name, "compiled": compiled, "compile_mode": mode if compiled else None,
              "batch": bs, "step_ms": ms,
              "samples_per_s": bs / ms * 1000, "host_ms": host_ms, "tflops": flops / (ms / 1000) / 1e12,
              "peak_gib": torch.cuda.max_memory_allocated() / 2 ** 30, "warmup_s": warm_s, "warmup_rounds": warmup_rounds,
              "host_ms_calls": [round(t, 1) for t in calls], "cudagraph_skips": counters["inductor"]["cudagraph_skips"] - skips,
              # what a stalled call may hold: graphs compiled, or the allocator freeing its cache to retry, in the timed window
              "graphs_compiled_timed": counters["stats"]["unique_graphs"] - compiles,
              "alloc_retries_timed": torch.cuda.memory_stats()["num_alloc_retries"] - retries}
    del model, optimizer, run
    torch.cuda.empty_cache()
    torch._dynamo.reset()
    return result


def matmul_peak(n=8192, iters=50):
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(5):
        a @ b
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(iters):
        a @ b
    torch.cuda.synchronize()
    return 2 * n ** 3 * iters / (time.perf_counter() - t) / 1e12


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--captions", nargs="+", required=True, help="caption files whose lengths the batches take")
    p.add_argument("--models", nargs="+", default=["ViT-B-32", "ViT-B-16"])
    p.add_argument("--variants", nargs="+", default=["open_clip", "clipscratch:packed", "clipscratch:trimmed"])
    p.add_argument("--eager", action="store_true", help="also time without torch.compile")
    p.add_argument("--warmup-rounds", type=int, default=2, help="passes over the 8 batches before timing (at least 2 "
                   "under @reduce-overhead)")
    p.add_argument("--iters", type=int, default=24)
    p.add_argument("--json", default=os.path.join(os.environ.get("OUT", "."), "train_step.json"))
    args = p.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    peak = matmul_peak()
    print(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}  bf16 matmul {peak:.0f} TFLOP/s", flush=True)
    rows, stats = [], []
    for path in args.captions:
        for name in args.models:
            batches, st = caption_batches(path, BATCH[name])
            if name == args.models[0]:
                stats.append(st)
                print(json.dumps(st), flush=True)
            for spec in args.variants:
                variant, _, how = spec.partition("@")
                mode = how if how not in ("", "eager") else None
                for compiled in ([True, False] if args.eager else [how != "eager"]):
                    try:
                        with inductor_config.patch(inductor_options(variant)):  # read as the step compiles
                            r = measure(variant, name, batches, compiled, args.warmup_rounds, args.iters, mode)
                    except Exception as e:  # report and go on with the other variants
                        print(f"{variant} {name}: failed: {type(e).__name__}: {str(e)[:300]}", flush=True)
                        continue
                    r["captions"] = st["file"]
                    rows.append(r)
                    print(json.dumps(r), flush=True)
    print("\n| captions | model | variant | compiled | batch | samples/s | step ms | TFLOP/s | % of matmul | peak GiB | vs open_clip |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ref = next((x for x in rows if x["variant"] == "open_clip" and x["model"] == r["model"] and x["compiled"]
                    and x.get("compile_mode") is None and x["captions"] == r["captions"]), None)
        ratio = f"{r['samples_per_s'] / ref['samples_per_s']:.2f}x" if ref else "-"
        compiled = r.get("compile_mode") or r["compiled"]
        print(f"| {r['captions']} | {r['model']} | {r['variant']} | {compiled} | {r['batch']} | {r['samples_per_s']:,.0f} | "
              f"{r['step_ms']:.1f} | {r['tflops']:.0f} | {100 * r['tflops'] / peak:.0f}% | {r['peak_gib']:.1f} | {ratio} |")
    with open(args.json, "w") as f:
        json.dump({"peak_tflops": peak, "captions": stats, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
