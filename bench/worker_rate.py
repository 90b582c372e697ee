"""What one data worker costs a sample in ``data.gpu_decode`` mode (tar reading, JPEG header,
crop box, tokenising; no decode) or, with ``--cpu-decode``, in the default mode (the JPEG
decoded, cropped and resized by PIL, uint8 pixels batched), in this process, on the CPU:

    python bench/data_fed.py --device cpu --model tiny-vit --image-size 32 --samples 2500 --variants uint8 \\
        --steps 1 --batch 16 --workers 1 --no-compile --workdir /tmp/shards   # writes 256-px shards
    python bench/worker_rate.py '/tmp/shards/part000-000000.tar' [--profile]
"""
import argparse
import cProfile
import os
import pstats
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("pattern", help="webdataset shards, e.g. 'dir/part{000..003}-000000.tar'")
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--cpu-decode", action="store_true", help="the default CPU path instead of data.gpu_decode's")
    p.add_argument("--profile", action="store_true", help="also print where the time goes (cProfile, top 20)")
    args = p.parse_args()
    from clipscratch.data.pipeline import ShardDataset, StreamSpec, expand_sources
    from clipscratch.transforms import image_transform

    spec = StreamSpec(sources=expand_sources(args.pattern), weights=[1.0], batch_size=args.batch, resampled=True,
                      batches_per_worker=10 ** 6, shuffle_buffer=2000, gpu_decode=not args.cpu_decode)
    batches = iter(ShardDataset(spec, image_transform(224, train=True, normalize=False), 77, trim_text=True))
    next(batches)  # fill the shuffle buffer
    rates = []
    for _ in range(args.rounds):
        t = time.perf_counter()
        for _ in range(3):
            next(batches)
        rates.append((time.perf_counter() - t) / 3 / args.batch * 1e6)
    print(f"us a sample in one worker, {args.rounds} rounds of 3 batches of {args.batch}: {[round(r) for r in rates]}")
    if args.profile:
        profiler = cProfile.Profile()
        profiler.runcall(lambda: [next(batches) for _ in range(3)])
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(20)


if __name__ == "__main__":
    main()
