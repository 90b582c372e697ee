"""The text tower on a side stream under DistributedDataParallel: processes sharing one GPU (two
with gloo; NCCL takes one process a GPU, so one with nccl), each with its own batch, eager fp32
steps with ``text_stream`` off, on, off again, and on with a probe; the weights after the steps
must be equal (the same kernels on the same inputs; the reducer's bucket copies and the
all-reduce must wait for the text tower's gradients, made on the side stream).

Why they do: DDP keeps each parameter's gradient accumulator (autograd's AccumulateGrad node)
from its construction, on the stream current then (the default one), so autograd runs the text
parameters' accumulation there after waiting for the side stream that made their gradients, and
the reducer's hooks, bucket copies and collective (which waits on the current stream, gloo and
NCCL alike) follow it. The probe run checks this: a comm hook records whether each bucket's
all-reduce is issued on the default stream, and the warnings autograd raises are kept.

    python bench/ddp_stream_check.py [--backend nccl --procs 1] [--device cpu]   # cpu: one stream only
"""
import argparse
import json
import os
import sys
import warnings

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import clipscratch  # noqa: E402
from clipscratch.loss import ClipLoss  # noqa: E402
from clipscratch.models.packing import pack_tokens  # noqa: E402


def initial_model(model_name: str):
    torch.manual_seed(0)
    return clipscratch.create_model(model_name)


def weights(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()]).cpu()


def probe_hook(on_default: list, bucket):
    """DDP's own all-reduce (averaged) of ``bucket``, noting first whether it is issued on the default stream."""
    on_default.append(torch.cuda.current_stream() == torch.cuda.default_stream() if bucket.buffer().is_cuda else None)
    return default_hooks.allreduce_hook(None, bucket)


def train(rank: int, device: str, text_stream: bool, model_name: str, steps: int, batch: int,
          on_default: list = None) -> torch.Tensor:
    """The weights after ``steps`` steps; ``on_default``: a list the probe hook appends to (no hook without it)."""
    model = initial_model(model_name).to(device).train()
    model.set_text_packing(True)
    model.set_text_stream(text_stream)
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    if on_default is not None:
        ddp.register_comm_hook(on_default, probe_hook)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(100 + rank)  # each rank its own batches
    size = model.image_size
    for step in range(steps):
        images = torch.randn(batch, 3, size, size, generator=g).to(device)
        words = [" ".join(["dog", "cat", "red", "big"][(i + step + rank) % 4] for _ in range(1 + (i * 7 + step) % 20))
                 for i in range(batch)]
        tokens = pack_tokens(clipscratch.tokenize(words, context_length=model.context_length, truncate=True)).to(device)
        ClipLoss()(*ddp(images, tokens)).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return weights(model)


def worker(rank: int, args, port: int, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 products in fp32
    torch.backends.cudnn.allow_tf32 = False
    if args.backend == "nccl":
        torch.cuda.set_device(rank)
    dist.init_process_group(args.backend, rank=rank, world_size=args.procs)
    results, on_default, caught = {}, [], {}
    for run, stream in (("one", False), ("side", True), ("one_again", False), ("side_probed", True)):
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            results[run] = train(rank, args.device, stream, args.model, args.steps, args.batch,
                                 on_default if run == "side_probed" else None)
        caught[run] = sorted({str(w.message)[:400] for w in seen})
    dist.destroy_process_group()
    if rank == 0:
        one = results["one"]
        queue.put({"model": args.model, "device": args.device, "backend": args.backend, "processes": args.procs,
                   "steps": args.steps, "batch_per_rank": args.batch,
                   "one_stream_again_identical": bool(torch.equal(results["one_again"], one)),
                   "side_stream_identical": bool(torch.equal(results["side"], one)),
                   "side_stream_max_abs_diff": float((results["side"] - one).abs().max()),
                   "side_probed_identical": bool(torch.equal(results["side_probed"], one)),
                   "probed_allreduces": len(on_default), "probed_allreduces_on_default_stream": sum(x is True for x in on_default),
                   "weights_moved": float((one - weights(initial_model(args.model))).abs().max()),
                   "warnings": caught})


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda (the processes share GPU 0 with gloo) or cpu")
    p.add_argument("--backend", default="gloo", choices=["gloo", "nccl"], help="nccl: one process a GPU")
    p.add_argument("--procs", type=int, default=2)
    p.add_argument("--model", default="ViT-B-32")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--batch", type=int, default=32, help="per process")
    args = p.parse_args()
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = 29500 + os.getpid() % 1000
    if args.backend == "nccl" and args.procs > torch.cuda.device_count():
        sys.exit(f"nccl takes one GPU a process: {args.procs} processes, {torch.cuda.device_count()} GPUs")
    procs = [ctx.Process(target=worker, args=(rank, args, port, queue)) for rank in range(args.procs)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join()  # rank 0's small result waits in the queue's pipe meanwhile
    if any(proc.exitcode for proc in procs):
        sys.exit(f"a process failed (exit codes {[proc.exitcode for proc in procs]}; its error is printed above)")
    result = queue.get(timeout=60)
    print(json.dumps(result))
    with open(os.path.join(os.environ.get("OUT", "."), f"ddp_stream_check_{args.backend}{args.procs}.json"), "w") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
