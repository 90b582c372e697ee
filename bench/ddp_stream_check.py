"""The text tower on a side stream under DistributedDataParallel: two processes (gloo) sharing one
GPU, each with its own batch, eager fp32 steps with ``text_stream`` on and off; the weights after
the steps must be equal (the same kernels on the same inputs; the reducer's bucket copies and
the all-reduce must wait for the text tower's gradients, made on the side stream).

    python bench/ddp_stream_check.py [--device cpu]   # cpu: the one-stream path only (a smoke run)
"""
import argparse
import json
import os
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import clipscratch  # noqa: E402
from clipscratch.loss import ClipLoss  # noqa: E402
from clipscratch.models.packing import pack_tokens  # noqa: E402


def initial_model(model_name: str):
    torch.manual_seed(0)
    return clipscratch.create_model(model_name)


def weights(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()]).cpu()


def train(rank: int, device: str, text_stream: bool, model_name: str, steps: int, batch: int) -> torch.Tensor:
    model = initial_model(model_name).to(device).train()
    model.set_text_packing(True)
    model.set_text_stream(text_stream)
    ddp = torch.nn.parallel.DistributedDataParallel(model)
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
    dist.init_process_group("gloo", rank=rank, world_size=2)
    results = {}
    for stream in (False, True, False):
        results.setdefault(stream, []).append(train(rank, args.device, stream, args.model, args.steps, args.batch))
    dist.destroy_process_group()
    if rank == 0:
        one, side = results[False][0], results[True][0]
        queue.put({"model": args.model, "device": args.device, "steps": args.steps, "batch_per_rank": args.batch,
                   "one_stream_again_identical": bool(torch.equal(results[False][1], one)),
                   "side_stream_identical": bool(torch.equal(side, one)),
                   "side_stream_max_abs_diff": float((side - one).abs().max()),
                   "weights_moved": float((one - weights(initial_model(args.model))).abs().max())})


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda (both processes on GPU 0) or cpu")
    p.add_argument("--model", default="ViT-B-32")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--batch", type=int, default=32, help="per process")
    args = p.parse_args()
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = 29500 + os.getpid() % 1000
    procs = [ctx.Process(target=worker, args=(rank, args, port, queue)) for rank in range(2)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join()  # rank 0's small result waits in the queue's pipe meanwhile
    if any(proc.exitcode for proc in procs):
        sys.exit(f"a process failed (exit codes {[proc.exitcode for proc in procs]}; its error is printed above)")
    result = queue.get(timeout=60)
    print(json.dumps(result))
    with open(os.path.join(os.environ.get("OUT", "."), "ddp_stream_check.json"), "w") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
