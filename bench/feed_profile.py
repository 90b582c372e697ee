"""Where the time goes when feeding the GPU: the shard pipeline's production rate by worker
count (no training step), and a cProfile of `gpu_transform` on one batch.

    python bench/feed_profile.py --workdir /tmp/bench_shards --workers 4 8 14 16

Uses the shards that bench/data_fed.py writes (it writes them if they are missing).
"""
import argparse
import cProfile
import io
import json
import os
import pstats
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))


def production_rate(pattern, workers, batch, batches, normalize):
    """Samples/s that `workers` data workers deliver to the main process (pinned), no GPU work."""
    from clipscratch.data.pipeline import ShardDataset, StreamSpec, expand_sources, make_loader
    from clipscratch.transforms import image_transform

    spec = StreamSpec(sources=expand_sources(pattern), weights=[1.0], batch_size=batch, resampled=True,
                      batches_per_worker=10 ** 6, shuffle_buffer=2000)
    loader = make_loader(ShardDataset(spec, image_transform(224, train=True, normalize=normalize), 77), workers,
                         pin_memory=torch.cuda.is_available())
    it = iter(loader)
    for _ in range(2 * workers):  # every worker has started and delivered
        next(it)
    t = time.perf_counter()
    for _ in range(batches):
        next(it)
    rate = batches * batch / (time.perf_counter() - t)
    del it
    return rate


def profile_gpu_transform(shard, batch, device):
    import webdataset as wds

    from clipscratch.data.gpu_decode import gpu_transform

    jpegs = []
    for sample in wds.WebDataset(shard, shardshuffle=False):
        jpegs.append(torch.frombuffer(bytearray(sample["jpg"]), dtype=torch.uint8))
        if len(jpegs) == batch:
            break
    boxes = torch.tensor([[8, 8, 240, 240]] * len(jpegs))
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    gpu_transform(jpegs, 224, device, boxes)
    sync()
    profiler = cProfile.Profile()
    t = time.perf_counter()
    profiler.enable()
    gpu_transform(jpegs, 224, device, boxes)
    sync()
    profiler.disable()
    total = time.perf_counter() - t
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(15)
    return total, out.getvalue()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default="/tmp/bench_shards")
    p.add_argument("--samples", type=int, default=30000)
    p.add_argument("--workers", type=int, nargs="+", default=[4, 8, 14, 16])
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--batches", type=int, default=40)
    p.add_argument("--json", default=os.path.join(os.environ.get("OUT", "."), "feed_profile.json"))
    args = p.parse_args()
    from data_fed import make_data

    pattern = make_data(args.workdir, args.samples, min(16, os.cpu_count()))
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    print("\n".join(line for line in lscpu.splitlines() if any(k in line for k in ("Model name", "Thread", "Core", "Socket", "CPU(s)"))))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    total, stats = profile_gpu_transform(os.path.join(args.workdir, "part000-000000.tar"), args.batch, device)
    print(f"\ngpu_transform, one batch of {args.batch}: {total * 1000:.1f} ms\n{stats}")
    rates = {}
    print("| workers | uint8 samples/s | float samples/s |\n|---|---|---|")
    for w in args.workers:
        rates[w] = {"uint8": production_rate(pattern, w, args.batch, args.batches, False),
                    "float": production_rate(pattern, w, args.batch, args.batches, True)}
        print(f"| {w} | {rates[w]['uint8']:,.0f} | {rates[w]['float']:,.0f} |", flush=True)
    with open(args.json, "w") as f:
        json.dump({"gpu_transform_ms": total * 1000, "production_rate": rates, "cpus": os.cpu_count(),
                   "lscpu": lscpu}, f, indent=2)


if __name__ == "__main__":
    main()
