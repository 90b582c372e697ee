"""Keep the GPU fed: training steps fed by the real shard pipeline vs synthetic on-GPU batches.

    python bench/data_fed.py --workdir /tmp/shards --samples 40000 --workers 14
    python bench/data_fed.py --pattern 'data/flickr8k/train/shard-{000000..000007}.tar' ...   # real photos as they are

Writes JPEG shards of 256x256 shape images with make_shards' writer (in parallel), then
times compiled clipscratch ViT-B/32 steps (bf16, batch 512) fed by ShardDataset
(decode, RandomResizedCrop, tokenisation in the workers) against the same step on a
fixed on-GPU batch, for each way of feeding (--variants), and prints a table.
"""
import argparse
import functools
import itertools
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
    from clipscratch.data.make_shards import synthetic_samples, write_shards

    write_shards(synthetic_samples(n, 1000 + shard, False, 256), out, maxcount=n, prefix=f"part{shard:03d}", desc=f"shard {shard}")


def make_data(workdir, samples, procs):
    per = 2500
    jobs = [(workdir, i, per) for i in range(samples // per)]
    if not os.path.exists(os.path.join(workdir, f"part{len(jobs) - 1:03d}_info.json")):
        with mp.get_context("fork").Pool(procs) as pool:
            pool.map(_write, jobs)
    return f"{workdir}/part{{000..{len(jobs) - 1:03d}}}-000000.tar"


OPTION_LABELS = {"beside": "synthetic batch, feeding running beside it", "stock": "8 fed batches in turn, no feeding",
                 "process": "decoded in a process of its own"}
VARIANTS = {  # name -> (what the workers send, description)
    "float": ("float", "real pipeline, CPU decode, float32 normalised in the workers (before)"),
    "uint8": ("uint8", "real pipeline, CPU decode, uint8 sent, normalised on the GPU (trainer default)"),
    "gpu_decode": ("torchvision", "`data.gpu_decode`, nvJPEG through torchvision + grid_sample, crops drawn in the workers"),
    "nvimgcodec": ("nvimgcodec", "`data.gpu_decode`, nvImageCodec on the hardware JPEG engines + grid_sample"),
}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default="/tmp/bench_shards")
    p.add_argument("--samples", type=int, default=40000)
    p.add_argument("--workers", type=int, default=14)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--model", default="ViT-B-32")
    p.add_argument("--variants", nargs="+", default=["uint8", "gpu_decode", "nvimgcodec"], choices=list(VARIANTS))
    p.add_argument("--pattern", help="read these shards instead of writing 256-pixel ones")
    p.add_argument("--prefetch", type=int, default=2, help="batches moved ahead in a thread (0: none)")
    p.add_argument("--device", default="cuda", help="cpu: a smoke run of the script (use a tiny --model)")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--compile-mode", default=None, help="torch.compile mode, e.g. reduce-overhead (CUDA graphs)")
    p.add_argument("--switch-intervals", nargs="+", type=float, default=[0.005],
                   help="the interpreter's thread switch interval (s) while the prefetch thread runs, one row each "
                        "(0.005: Python's own, which the trainer keeps)")
    p.add_argument("--stream-priorities", nargs="+", type=int, default=[0],
                   help="CUDA stream priority of the prefetch thread (0: the training's; -1: ahead of it), one row each")
    p.add_argument("--feed-only", action="store_true",
                   help="also time each row's feeding alone (no training step): how fast the pipeline delivers batches")
    p.add_argument("--gpu-busy", action="store_true",
                   help="also profile 8 fed steps of each row: GPU busy time and kernel time per CUDA stream")
    p.add_argument("--separate", action="store_true",
                   help="also time the fixed batch with the feeding running beside it, and 8 fed batches in turn "
                        "with no feeding: the feeding's cost apart from fresh inputs' cost")
    p.add_argument("--inductor", nargs="+", default=[], metavar="KEY=VALUE",
                   help="torch._inductor.config settings for the compiled step, e.g. cpp_wrapper=True")
    p.add_argument("--skip-fed", action="store_true",
                   help="time only the --separate rows (e.g. under CUDA graphs, which record again for every caption length)")
    p.add_argument("--train-stream", choices=["default", "side"], default="default",
                   help="the CUDA stream the training steps run on: the default (legacy) stream, which waits for the "
                        "work of other blocking streams in the process, or a stream of their own")
    p.add_argument("--decode-calls", action="store_true",
                   help="also count the CUDA API calls of one batch's decode and of its whole GPU transform")
    p.add_argument("--feed-in", nargs="+", choices=["thread", "process"], default=["thread"],
                   help="where the decode runs: a thread of the training process (as the trainer), or also a "
                        "process of its own handing decoded batches over through CUDA IPC (rows marked 'process')")
    p.add_argument("--step", choices=["bench", "trainer"], default="bench",
                   help="bench: forward, loss, backward and AdamW compiled as one function; trainer: train.py's own "
                        "step (accelerate's bf16, the model compiled, clipscratch's optimizer_step with clipping and "
                        "schedule; --compile-mode reduce-overhead is train.py's cuda_graphs=true; --inductor does "
                        "not apply)")
    p.add_argument("--bucket", type=int, default=0,
                   help="pack the text filled to a multiple of this many tokens (train.py's cuda_graphs=true: 256), "
                        "so that CUDA graphs record a few shapes instead of one for every batch")
    p.add_argument("--main-threads", type=int, default=None,
                   help="torch's intra-op CPU threads in the training process (default: torch's, one per core)")
    p.add_argument("--json", default=os.path.join(os.environ.get("OUT", "."), "data_fed.json"))
    args = p.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    t = time.perf_counter()
    pattern = args.pattern or make_data(args.workdir, args.samples, min(16, os.cpu_count()))
    print(f"shards ready in {time.perf_counter() - t:.0f}s: {pattern}", flush=True)

    import clipscratch
    from clipscratch.data.gpu_decode import gpu_transform, unpack_jpegs
    from clipscratch.data.prefetch import prefetch_to_device, to_device, waited
    from clipscratch.models.packing import pack_tokens
    from train_step import clip_loss

    torch.backends.cuda.matmul.allow_tf32 = True
    if args.train_stream == "side":
        torch.cuda.set_stream(torch.cuda.Stream())
    if args.main_threads:
        torch.set_num_threads(args.main_threads)
    import torch._inductor.config as inductor_config

    for setting in args.inductor:
        key, value = setting.split("=", 1)
        setattr(inductor_config, key, {"True": True, "False": False}.get(value, value))
    dev, size = args.device, args.image_size
    if args.step == "trainer":
        step = trainer_step(args.model, dev, compiled=not args.no_compile, mode=args.compile_mode)
    else:
        model = clipscratch.create_model(args.model).to(dev).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=dev == "cuda")

        def step(images, tokens):
            with torch.autocast(dev, dtype=torch.bfloat16):
                loss = clip_loss(model.encode_image(images), model.encode_text(tokens), model.scale())
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            return loss

        if not args.no_compile:
            step = torch.compile(step, mode=args.compile_mode)
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)

    def loader(kind):
        return fed_loader(pattern, args.batch, args.workers, size, kind, dev)

    pack = functools.partial(pack_tokens, bucket=args.bucket)  # captions packed on the host, as the trainer

    def to_gpu(b, decoder="torchvision"):
        return to_device(b, torch.device(dev), size, decoder, pack=pack)

    cpu = {}  # row -> the host's CPU use during its timed steps

    def timed(batches, row):
        for _ in range(20):  # compile / let the workers start up and fill their prefetch queues
            step(*next(batches))
        sync()
        meter = CpuMeter()
        for _ in range(args.steps):
            step(*next(batches))
        sync()
        cpu[row] = meter.read()
        return cpu[row]["wall_s"] / args.steps

    it = iter(loader("uint8"))
    fixed = to_gpu(next(it))
    del it
    rows = {"synthetic": timed(iter(lambda: fixed, None), "synthetic")}
    extra = {"synthetic_launch_ms": launch_ms(step, fixed, sync)}
    print(f"host time to launch one step from an idle GPU: {extra['synthetic_launch_ms']:.1f} ms", flush=True)
    if args.gpu_busy:
        extra["synthetic_gpu_busy"] = gpu_busy(step, iter(lambda: fixed, None), sync)
    text_len = int(fixed[1].layout.shape[1])
    for name in args.variants:
        kind, _ = VARIANTS[name]
        it = iter(loader(kind))
        if kind in ("torchvision", "nvimgcodec"):
            b = next(it)
            extra[f"{name}_profile_ms"] = profile_gpu_decode(unpack_jpegs(b["images"], b["jpeg_ends"]), b.get("boxes"),
                                                            gpu_transform, dev, size, sync, kind, args.decode_calls)
            if args.decode_calls:
                print(name, json.dumps(extra[f"{name}_profile_ms"]), flush=True)
        for interval, priority in [(i, p) for i in args.switch_intervals for p in args.stream_priorities]:
            row = name + (f"@{interval * 1e3:g}ms" if len(args.switch_intervals) > 1 else "") + (
                f"@priority{priority}" if len(args.stream_priorities) > 1 else "")
            # as the trainer does: the next batches are moved (decoded) in a thread on a side stream
            prepare_ms, wait_ms = [], []  # the prefetch thread's host time a batch; the training's wait for one

            def prepare(b, kind=kind):
                t = time.perf_counter()
                moved = to_gpu(b, kind)
                prepare_ms.append((time.perf_counter() - t) * 1000)
                return moved

            batches = prefetch_to_device(it, prepare, torch.device(dev), depth=args.prefetch,
                                         switch_interval=interval, priority=priority)
            fed = waited((moved for _, moved in batches), wait_ms)

            def note_waits(label):  # over the row's timed steps
                n = args.steps
                extra[f"{label}_prepare_ms"] = sorted(prepare_ms[-n:])[len(prepare_ms[-n:]) // 2]
                extra[f"{label}_wait_ms"] = sum(wait_ms[-n:]) / n
                print(label, f"prefetch thread {extra[f'{label}_prepare_ms']:.1f} ms a batch (median), "
                      f"training waits {extra[f'{label}_wait_ms']:.1f} ms a step for it", flush=True)
            if args.feed_only:
                extra[f"{row}_feed_only_ms"] = feed_only(fed, args.steps, sync) * 1000
                print(row, "feed only", f"{extra[f'{row}_feed_only_ms']:.1f} ms a batch", flush=True)
            if not args.skip_fed:
                rows[row] = timed(fed, row)
                note_waits(row)
            if args.separate:
                # the fixed batch stepped while the feeding keeps pace (its batches dropped): what the
                # feeding itself costs the step, on the GPU or in the host's threads
                rows[f"{row}@beside"] = timed((fixed for _ in fed), f"{row}@beside")
                note_waits(f"{row}@beside")
                # fed batches moved first and stepped through in turn: fresh inputs, nothing fed meanwhile
                stock = [next(fed) for _ in range(8)]
                rows[f"{row}@stock"] = timed(itertools.cycle(stock), f"{row}@stock")
                del stock
            if args.gpu_busy:  # the fed row's steps, or (--skip-fed) the fixed batch's with the feeding beside
                label, source = (row, fed) if not args.skip_fed else (f"{row}@beside", (fixed for _ in fed))
                extra[f"{label}_gpu_busy"] = gpu_busy(step, source, sync)
                print(label, json.dumps(extra[f"{label}_gpu_busy"]), flush=True)
            batches.close()
        del it
        if "process" in args.feed_in:
            # the same feeding in a process of its own (its own interpreter and CUDA context), its
            # decoded batches handed over through CUDA IPC: nothing of it runs in the training process
            if not args.skip_fed:
                with FedByProcess(pattern, args, size, kind) as fed:
                    rows[f"{name}@process"] = timed(fed, f"{name}@process")
            if args.separate:
                with FedByProcess(pattern, args, size, kind) as fed:
                    rows[f"{name}@process@beside"] = timed((fixed for _ in fed), f"{name}@process@beside")
    res = {"model": args.model, "batch": args.batch, "workers": args.workers, "text_len": text_len,
           "compile_mode": args.compile_mode, "prefetch": args.prefetch,
           "switch_intervals": args.switch_intervals, "stream_priorities": args.stream_priorities,
           "step_ms": {k: v * 1000 for k, v in rows.items()},
           "samples_per_s": {k: args.batch / v for k, v in rows.items()},
           "slowdown_vs_synthetic": {k: v / rows["synthetic"] - 1 for k, v in rows.items()},
           "device": torch.cuda.get_device_name() if dev == "cuda" else "cpu", "cpus": os.cpu_count(),
           "main_threads": torch.get_num_threads(), "inductor": args.inductor, "train_stream": args.train_stream,
           "step": args.step,
           "cpu_cores_busy": cpu, **extra}
    print(json.dumps(res, indent=2))
    print(f"\n| feeding | step | samples/s | vs synthetic | host cores busy (of {os.cpu_count()}) | main process |\n|---|---|---|---|---|---|")
    for k, v in rows.items():
        name, *options = k.split("@")
        options = [OPTION_LABELS.get(o) or o.replace("ms", " ms switch interval").replace("priority", "stream priority ")
                   for o in options]
        label = ", ".join([VARIANTS[name][1], *options]) if name in VARIANTS else "synthetic on-GPU batch"
        print(f"| {label} | {v * 1000:.1f} ms | {args.batch / v:,.0f} | {100 * (v / rows['synthetic'] - 1):+.0f}% "
              f"| {cpu[k]['host']:.1f} | {cpu[k]['main_process']:.1f} |")
    with open(args.json, "w") as f:
        json.dump(res, f, indent=2)


def trainer_step(name, dev, compiled=True, mode=None):
    """train.py's step as run.py builds it (default optimiser settings, bf16 on a GPU): the model
    prepared by accelerate and compiled (``mode``: torch.compile's; reduce-overhead is train.py's
    cuda_graphs=true), ``optimizer_step`` with clipping and the schedule."""
    from accelerate import Accelerator

    import clipscratch
    from clipscratch.loss import make_loss
    from clipscratch.train.config import OptimConfig
    from clipscratch.train.optim import make_optimizer, warmup_cosine
    from clipscratch.train.step import optimizer_step

    accelerator = Accelerator(mixed_precision="bf16" if dev == "cuda" else "no", cpu=dev == "cpu")
    model = clipscratch.create_model(name).train()
    model.set_text_packing(True)
    optim = OptimConfig()
    optimizer = make_optimizer(model, optim, fused=dev == "cuda")
    scheduler = warmup_cosine(optimizer, optim.warmup_steps, 10 ** 6)
    model, optimizer = accelerator.prepare(model, optimizer)
    model = torch.compile(model, mode=mode) if compiled else model
    loss_fn = make_loss("clip")

    def step(images, tokens):
        if mode == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()
        return optimizer_step(model, [(images, tokens)], loss_fn, accelerator, optimizer, scheduler, optim.grad_clip)

    return step


def fed_loader(pattern, batch, workers, size, kind, dev):
    from clipscratch.data.pipeline import ShardDataset, StreamSpec, expand_sources, make_loader
    from clipscratch.transforms import image_transform

    spec = StreamSpec(sources=expand_sources(pattern), weights=[1.0], batch_size=batch, resampled=True,
                      batches_per_worker=10 ** 6, shuffle_buffer=2000, gpu_decode=kind in ("torchvision", "nvimgcodec"))
    transform = image_transform(size, train=True, normalize=kind == "float")
    return make_loader(ShardDataset(spec, transform, 77, trim_text=True), workers, pin_memory=dev == "cuda")


def feed_process(pattern, batch, workers, size, kind, dev, bucket, handed, stop):
    """In a process of its own: read, decode and pack batches on the GPU and put them on
    ``handed`` (CUDA tensors travel as IPC handles; the queue's bound keeps it a few ahead)
    until ``stop`` is set; then the loader shuts its workers down (a killed process would leave
    them blocked on their queues)."""
    from clipscratch.data.prefetch import to_device
    from clipscratch.models.packing import pack_tokens

    try:
        pack = functools.partial(pack_tokens, bucket=bucket)
        for b in fed_loader(pattern, batch, workers, size, kind, dev):
            if stop.is_set():
                break
            moved = to_device(b, torch.device(dev), size, kind, pack=pack)
            if moved is not None:
                handed.put(moved)
    except BaseException as error:  # noqa: BLE001 - reported to the training process
        handed.put(f"feeding process failed: {error!r}")


class FedByProcess:
    """Batches decoded by ``feed_process`` in a spawned process, as an iterator in a ``with``."""

    def __init__(self, pattern, args, size, kind):
        import torch.multiprocessing as tmp

        ctx = tmp.get_context("spawn")
        self.handed, self.stop = ctx.Queue(maxsize=max(1, args.prefetch)), ctx.Event()
        # not a daemon: it starts the data workers itself
        self.process = ctx.Process(target=feed_process, daemon=False,
                                   args=(pattern, args.batch, args.workers, size, kind, args.device, args.bucket, self.handed,
                                         self.stop))

    def __enter__(self):
        self.process.start()
        return self

    def __iter__(self):
        return self

    def __next__(self):
        item = self.handed.get()
        if isinstance(item, str):
            raise RuntimeError(item)
        images, tokens = item
        return images, tokens.to(images.device)  # already there: marks N and T dynamic again for torch.compile

    def __exit__(self, *exc):
        import queue

        self.stop.set()
        deadline = time.monotonic() + 60
        while self.process.is_alive() and time.monotonic() < deadline:  # unblock a put on the full queue
            try:
                self.handed.get(timeout=0.5)
            except queue.Empty:
                pass
        if self.process.is_alive():
            self.process.terminate()
        self.process.join()


class CpuMeter:
    """CPU cores kept busy from its creation to ``read()``: the whole host (/proc/stat, Linux)
    and this process with all its threads (the training and prefetch threads; the data workers
    are other processes)."""

    def __init__(self):
        self.host, self.own, self.wall = _host_busy_s(), time.process_time(), time.perf_counter()

    def read(self) -> dict:
        wall = time.perf_counter() - self.wall
        host = _host_busy_s()
        return {"wall_s": wall, "host": (host - self.host) / wall if host is not None else float("nan"),
                "main_process": (time.process_time() - self.own) / wall}


def _host_busy_s():
    """Seconds of CPU the host has spent busy (all cores) since boot; None off Linux."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except OSError:
        return None
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")  # user nice system idle iowait irq softirq steal


def launch_ms(step, batch, sync, reps=10):
    """Median host time of one step call with the GPU idle before it: the CPU's share of a step
    (Python, Inductor's wrapper, the launches), which the GPU's time hides until it nears it."""
    times = []
    for _ in range(reps):
        sync()
        t = time.perf_counter()
        step(*batch)
        times.append((time.perf_counter() - t) * 1000)
    sync()
    return sorted(times)[reps // 2]


def feed_only(batches, steps, sync):
    """Seconds per batch the feeding delivers with no training step in the way."""
    for _ in range(10):
        next(batches)
    sync()
    t = time.perf_counter()
    for _ in range(steps):
        next(batches)
    sync()
    return (time.perf_counter() - t) / steps


def gpu_busy(step, batches, sync, steps=8):
    """Profile ``steps`` fed steps (CUDA activity only): per step, the wall time, the time the
    GPU ran any kernel or copy (the union over streams) and the kernel time of each stream. Busy
    close to wall: the GPU sets the pace (the decode's kernels take SM time from the step); busy
    well under wall: the GPU waits for the host."""
    import collections
    import tempfile
    import threading

    from torch.profiler import ProfilerActivity, profile

    sync()
    with profile(activities=[ProfilerActivity.CUDA if torch.cuda.is_available() else ProfilerActivity.CPU]) as prof:
        t = time.perf_counter()
        for _ in range(steps):
            step(*next(batches))
        sync()
        wall = time.perf_counter() - t
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        prof.export_chrome_trace(f.name)
        events = json.load(open(f.name))["traceEvents"]
    work = [e for e in events if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset") and "dur" in e]
    by_stream = collections.Counter()
    for e in work:
        by_stream[str(e.get("args", {}).get("stream"))] += e["dur"]
    busy, end = 0.0, float("-inf")
    for start, stop in sorted((e["ts"], e["ts"] + e["dur"]) for e in work):
        busy += max(0.0, stop - max(start, end))
        end = max(end, stop)
    # CUDA API calls (runtime and driver) by thread: a call that waits for the device (a free, a
    # synchronisation) in the prefetch thread can hold up the training thread's launches
    main = threading.get_native_id()
    calls = collections.defaultdict(lambda: [0.0, 0, 0.0])  # (thread, call) -> [total us, count, longest us]
    for e in events:
        if e.get("cat") in ("cuda_runtime", "cuda_driver") and "dur" in e:
            entry = calls[(e.get("tid"), e["name"])]
            entry[0] += e["dur"]
            entry[1] += 1
            entry[2] = max(entry[2], e["dur"])
    top = sorted(calls.items(), key=lambda kv: -kv[1][0])[:12]
    return {"wall_ms": wall / steps * 1e3, "gpu_busy_ms": busy / steps / 1e3,
            "kernel_ms_by_stream": {k: v / steps / 1e3 for k, v in by_stream.most_common()},
            "main_thread_tid": main,
            "cuda_calls_ms_per_step": [{"tid": tid, "call": name, "ms": total / steps / 1e3, "count": count / steps,
                                        "longest_ms": longest / 1e3} for (tid, name), (total, count, longest) in top]}


def profile_gpu_decode(jpegs, boxes, gpu_transform, dev, size, sync, decoder, calls=False):
    """Milliseconds for one batch: the decode alone, and the whole gpu_transform; with ``calls``,
    also the CUDA API calls each makes for one batch (name -> count), to find per-image waits."""
    from clipscratch.data.gpu_decode import _decode

    out = {}
    for label, fn in (("decode", lambda: _decode(jpegs, dev, decoder)),
                      ("gpu_transform", lambda: gpu_transform(jpegs, size, dev, boxes, decoder))):
        fn()
        sync()
        t = time.perf_counter()
        for _ in range(3):
            fn()
        sync()
        out[label] = (time.perf_counter() - t) / 3 * 1000
        if calls:
            out[f"{label}_cuda_calls"] = cuda_calls(fn, sync)
    return out


def cuda_calls(fn, sync) -> dict:
    """The CUDA runtime and driver calls one ``fn()`` makes, in any thread: name -> count."""
    import collections
    import tempfile

    from torch.profiler import ProfilerActivity, profile

    sync()
    with profile(activities=[ProfilerActivity.CUDA if torch.cuda.is_available() else ProfilerActivity.CPU]) as prof:
        fn()
        sync()
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        prof.export_chrome_trace(f.name)
        events = json.load(open(f.name))["traceEvents"]
    counts = collections.Counter(e["name"] for e in events if e.get("cat") in ("cuda_runtime", "cuda_driver"))
    return dict(counts.most_common(12))


if __name__ == "__main__":
    main()
