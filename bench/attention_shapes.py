"""Attention kernels at CLIP's training shapes, forward + backward, bf16, each compiled:

    python bench/attention_shapes.py --captions ../shared/data/flickr8k-captions/Flickr8k.token.txt

text (the text tower's 8 heads of 64, a batch of 512 real captions as ViT-B/32's, 256 as ViT-B/16's):
  varlen         packed tokens, flash attention's variable-length kernel (models/packing.py)
  padded sdpa    scattered into [B, T] (T = the longest caption), scaled_dot_product_attention
                 (padded cudnn / flash / efficient: that backend only)
  padded math    the same layout, softmax(q k^T + causal mask) v written out for Inductor to fuse
image (12 heads of 64 as ViT-B/32 at batch 512, T=50, and ViT-B/16 at batch 256, T=197; q, k, v
views of one projection's output [B, T, 3C] as in the model, each compiled):
  sdpa (default), flash, cudnn, efficient: scaled_dot_product_attention with that backend only
  math           softmax(q k^T) v written out
  flex           FlexAttention (torch.nn.attention.flex_attention, Triton), no mask
  cudnn / efficient, contiguous q/k/v: copied out of the projection's output first
--image-sweep: SDPA's pick, cuDNN, memory-efficient and flash at T = 50 ... 257 (B x T ~ 25,600)
Milliseconds per layer (forward + backward): the wall time, median of 20 after warm-up (small
shapes are bound by the host's launches there), and the GPU's kernel time, the mean over 20
under the profiler (what the layer costs inside a step whose launches run ahead of the GPU);
and the GPU's kernel time of the forward alone without autograd (as in evaluation).
"""
import argparse
import contextlib
import json
import os
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def math_attention(q, k, v, causal):
    s = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5  # [B, H, T, T]
    if causal:
        T = q.shape[-2]
        s = s.masked_fill(torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
    return s.float().softmax(-1).to(q.dtype) @ v


def sdpa(backend, causal=False):
    """scaled_dot_product_attention(q, k, v) with that backend only (None: SDPA's own pick)."""
    def attend(q, k, v):
        with sdpa_kernel(backend) if backend is not None else contextlib.nullcontext():
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    return attend


def timed(fn, *inputs, iters=20):
    for _ in range(3):
        fn(*inputs).sum().backward()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn(*inputs).sum().backward()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def gpu_ms(fn, *inputs, iters=20, backward=True):
    """The GPU's kernel time per call of fn(*inputs).sum().backward() (or of the forward alone,
    without autograd, as in evaluation), from the profiler."""
    from torch.profiler import ProfilerActivity, profile

    def call():
        if backward:
            fn(*inputs).sum().backward()
        else:
            with torch.no_grad():
                fn(*inputs)

    call()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            call()
        torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if not e.key.startswith("ProfilerStep")]
    total_us = sum(getattr(e, "device_time_total", 0) or getattr(e, "cuda_time_total", 0) for e in events)
    return total_us / 1000 / iters


def row(shape, name, fn, *inputs):
    torch._dynamo.reset()  # each row compiled afresh: the rows' closures share code, whose recompilations are capped
    try:
        return {"shape": shape, "variant": name, "ms": timed(fn, *inputs), "gpu_ms": gpu_ms(fn, *inputs),
                "forward_gpu_ms": gpu_ms(fn, *inputs, backward=False)}
    except Exception as e:
        return {"shape": shape, "variant": name, "ms": None, "gpu_ms": None, "error": str(e)[:200]}


def text_rows(captions_path, batch, filled=False):
    from clipscratch.models import packing
    from train_step import caption_batches

    batches, _ = caption_batches(captions_path, batch)
    packed = packing.pack_tokens(batches[0], bucket=256 if filled else 0).to("cuda")  # filled: as for CUDA graphs
    B, T = packed.layout.shape
    N, H, D = packed.ids.shape[0], 8, 64
    qkv = torch.randn(N, 3 * H * D, device="cuda", dtype=torch.bfloat16, requires_grad=True)

    def padded(qkv, attend):
        full = qkv.new_zeros(B * T, 3 * H * D).index_copy(0, packed.slots, qkv)
        q, k, v = full.view(B, T, 3, H, D).permute(2, 0, 3, 1, 4).unbind(0)
        return attend(q, k, v).transpose(1, 2).reshape(B * T, H * D)[packed.slots]

    variants = {
        "varlen": lambda x: packing.packed_attention(x, H, packed),
        "padded sdpa": lambda x: padded(x, sdpa(None, causal=True)),
        "padded cudnn": lambda x: padded(x, sdpa(SDPBackend.CUDNN_ATTENTION, causal=True)),
        "padded flash": lambda x: padded(x, sdpa(SDPBackend.FLASH_ATTENTION, causal=True)),
        "padded efficient": lambda x: padded(x, sdpa(SDPBackend.EFFICIENT_ATTENTION, causal=True)),
        "efficient (packing.py)": lambda x: packing.packed_attention(x, H, packed, "efficient"),
        "padded math": lambda x: padded(x, lambda q, k, v: math_attention(q, k, v, True)),
    }
    return [row(f"text B={batch} N={N} T={T}" + (" filled" if filled else ""), name, torch.compile(fn), qkv) for name, fn in variants.items()]


def image_sweep(tokens=(50, 65, 82, 101, 145, 197, 257), budget=25_600):
    """The image tower's attention over image sizes (ViT-B/32 at 224 to 512 px, ViT-B/16 and ViT-L/14
    at 224: T = 50 ... 257), B x T ~ ``budget`` tokens: SDPA's pick against the memory-efficient
    kernel (and flash), to place the sequence length where the pick is right."""
    rows = []
    for T in tokens:
        rows += image_rows(max(1, budget // T), T, ("sdpa", "cudnn", "efficient", "flash"), contiguous=False)
    return rows


def image_rows(B, T, names=("sdpa", "flash", "cudnn", "efficient", "math", "flex"), contiguous=True):
    """The image tower's attention as the model runs it: q, k and v views of one projection's
    output [B, T, 3C] (layers.Attention), the output back to [B, T, C]; each backend of SDPA, the
    written-out softmax, FlexAttention; and cuDNN and memory-efficient on contiguous q, k, v."""
    H, D = 12, 64
    qkv = torch.randn(B, T, 3 * H * D, device="cuda", dtype=torch.bfloat16, requires_grad=True)

    def as_model(attend, contiguous=False):
        def layer(qkv):
            q, k, v = qkv.view(B, T, 3, H, D).permute(2, 0, 3, 1, 4).unbind(0)  # 3 x [B, H, T, D]
            if contiguous:
                q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
            return attend(q, k, v).transpose(1, 2).reshape(B, T, H * D)
        return layer

    from torch.nn.attention.flex_attention import flex_attention

    variants = {
        "sdpa": sdpa(None), "flash": sdpa(SDPBackend.FLASH_ATTENTION), "cudnn": sdpa(SDPBackend.CUDNN_ATTENTION),
        "efficient": sdpa(SDPBackend.EFFICIENT_ATTENTION), "math": lambda q, k, v: math_attention(q, k, v, False),
        "flex": flex_attention,  # FlexAttention's Triton kernel, no mask
    }
    rows = [row(f"image B={B} T={T}", name, torch.compile(as_model(variants[name])), qkv) for name in names]
    for name in ("cudnn", "efficient") if contiguous else ():
        rows.append(row(f"image B={B} T={T}", f"{name}, contiguous q/k/v", torch.compile(as_model(variants[name], True)), qkv))
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--captions", required=True)
    p.add_argument("--text-only", action="store_true", help="only the text rows")
    p.add_argument("--image-only", action="store_true", help="only the image rows")
    p.add_argument("--image-sweep", action="store_true", help="only the image tower's attention over T = 50 ... 257")
    p.add_argument("--filled", action="store_true", help="the captions packed as for CUDA graphs (bucket=256, T=77)")
    p.add_argument("--json", default=os.path.join(os.environ.get("OUT", "."), "attention_shapes.json"))
    args = p.parse_args()
    sys.path.insert(0, os.path.dirname(__file__))
    if args.image_sweep:
        return report(image_sweep(), args.json)
    rows = [] if args.image_only else [r for batch in (512, 256) for r in text_rows(args.captions, batch, args.filled)]
    if not args.text_only:
        rows += image_rows(512, 50) + image_rows(256, 197)
    report(rows, args.json)


def report(rows, path):
    print("| shape | variant | ms per layer (fwd+bwd) | GPU kernel ms | GPU kernel ms, forward alone |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['shape']} | {r['variant']} | {r['ms']:.3f} | {r['gpu_ms']:.3f} | {r['forward_gpu_ms']:.3f} |"
              if r["ms"] is not None else f"| {r['shape']} | {r['variant']} | failed: {r['error']} | | |")
    with open(path, "w") as f:
        json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
