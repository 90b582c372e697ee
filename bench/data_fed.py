"""Keep the GPU fed: training steps fed by the real shard pipeline vs synthetic on-GPU batches.

    python bench/data_fed.py --workdir /tmp/shards --samples 40000 --workers 14

Writes JPEG shards of 256x256 shape images with make_shards' writer (in parallel), then
times compiled clipscratch ViT-B/32 steps (bf16, batch 512) fed by ShardDataset
(decode, RandomResizedCrop, tokenisation in the workers) against the same step on a
fixed on-GPU batch.
"""
import argparse
import json
import multiprocessing as mp
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))


def _write(args):
    out, shard, n = args
    from clipscratch.data.make_shards import synthetic_records, write_shards

    write_shards(synthetic_records(n, 1000 + shard, False, 256), out, maxcount=n, prefix=f"part{shard:03d}", desc=f"shard {shard}")


def make_data(workdir, samples, procs):
    per = 2500
    jobs = [(workdir, i, per) for i in range(samples // per)]
    if not os.path.exists(os.path.join(workdir, f"part{len(jobs) - 1:03d}_info.json")):
        with mp.get_context("fork").Pool(procs) as pool:
            pool.map(_write, jobs)
    return f"{workdir}/part{{000..{len(jobs) - 1:03d}}}-000000.tar"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default="/tmp/bench_shards")
    p.add_argument("--samples", type=int, default=40000)
    p.add_argument("--workers", type=int, default=14)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--model", default="ViT-B-32")
    p.add_argument("--gpu-decode", action="store_true", help="decode and augment JPEGs on the GPU")
    p.add_argument("--json", default=os.path.join(os.environ.get("OUT", "."), "data_fed.json"))
    args = p.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    t = time.perf_counter()
    pattern = make_data(args.workdir, args.samples, min(16, os.cpu_count()))
    print(f"shards ready in {time.perf_counter() - t:.0f}s: {pattern}", flush=True)

    import clipscratch
    from clipscratch.data.pipeline import ShardDataset, StreamSpec, expand_sources, make_loader
    from clipscratch.transforms import image_transform
    from train_step import clip_loss

    torch.backends.cuda.matmul.allow_tf32 = True
    model = clipscratch.create_model(args.model).cuda().train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)

    @torch.compile
    def step(images, tokens):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = clip_loss(model.encode_image(images), model.encode_text(tokens), model.scale())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    spec = StreamSpec(sources=expand_sources(pattern), weights=[1.0], batch_size=args.batch, resampled=True,
                      batches_per_worker=10 ** 6, shuffle_buffer=2000, num_workers=args.workers, gpu_decode=args.gpu_decode)
    loader = make_loader(ShardDataset(spec, image_transform(224, train=True), 77, trim_text=True), args.workers, pin_memory=True)
    from clipscratch.data.gpu_decode import gpu_transform

    def to_gpu(b):
        if isinstance(b["images"], list):
            images, keep = gpu_transform(b["images"], 224, "cuda", True)
            return images, b["tokens"].cuda(non_blocking=True)[keep.cuda()]
        return b["images"].cuda(non_blocking=True), b["tokens"].cuda(non_blocking=True)

    it = iter(loader)
    fixed_images, fixed_tokens = to_gpu(next(it))
    for _ in range(5):
        step(fixed_images, fixed_tokens)
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(args.steps):
        step(fixed_images, fixed_tokens)
    torch.cuda.synchronize()
    synthetic = (time.perf_counter() - t) / args.steps
    for _ in range(10):  # let the workers fill their prefetch queues
        step(*to_gpu(next(it)))
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(args.steps):
        step(*to_gpu(next(it)))
    torch.cuda.synchronize()
    fed = (time.perf_counter() - t) / args.steps
    res = {"gpu_decode": args.gpu_decode, "model": args.model, "batch": args.batch, "workers": args.workers, "text_len": int(fixed_tokens.shape[1]),
           "synthetic_step_ms": synthetic * 1000, "data_fed_step_ms": fed * 1000,
           "synthetic_samples_per_s": args.batch / synthetic, "data_fed_samples_per_s": args.batch / fed,
           "slowdown": fed / synthetic - 1, "device": torch.cuda.get_device_name(), "cpus": os.cpu_count()}
    print(json.dumps(res, indent=2))
    with open(args.json, "w") as f:
        json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
