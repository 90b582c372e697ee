"""Two GPUs: (1) a 2-process run's loss and gradients equal a 1-GPU run on the same global
batch; (2) 2-GPU training throughput over 1-GPU (ViT-B/32, 512 per GPU, bf16, eager).

    python bench/two_gpu.py --single                                        # 1-GPU throughput
    accelerate launch --multi_gpu --num_processes 2 bench/two_gpu.py        # equivalence + 2-GPU throughput
"""
import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import clipscratch  # noqa: E402
from clipscratch.loss import ClipLoss  # noqa: E402
from clipscratch.train.step import plain_step  # noqa: E402


def global_batch(n, device):
    g = torch.Generator().manual_seed(123)
    images = torch.randn(n, 3, 224, 224, generator=g)
    tokens = torch.randint(1, 49406, (n, 77), generator=g)
    tokens[:, 0], tokens[:, 30] = 49406, 49407
    tokens[:, 31:] = 0
    return images.to(device), tokens.to(device)


def _local_clip_loss(img, txt, scale, bias=None):
    logits = scale * img @ txt.T
    labels = torch.arange(img.shape[0], device=img.device)
    return (torch.nn.functional.cross_entropy(logits, labels) + torch.nn.functional.cross_entropy(logits.T, labels)) / 2


def throughput(model, optimizer, backward, images, tokens, steps=20):
    loss_fn = ClipLoss()

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            plain_step(model, (images, tokens), loss_fn, backward)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(5):
        step()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / steps


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--single", action="store_true")
    p.add_argument("--batch", type=int, default=512, help="per GPU")
    p.add_argument("--out", default=os.environ.get("OUT", "."))
    args = p.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False  # exact fp32 for the equivalence check
    if args.single:
        model = clipscratch.create_model("ViT-B-32").cuda().train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
        images, tokens = global_batch(args.batch, "cuda")
        t = throughput(model, opt, lambda l: l.backward(), images, tokens)
        res = {"gpus": 1, "step_s": t, "samples_per_s": args.batch / t}
        print(json.dumps(res))
        json.dump(res, open(os.path.join(args.out, "one_gpu.json"), "w"))
        return

    from accelerate import Accelerator

    import faulthandler

    faulthandler.dump_traceback_later(int(os.environ.get("STACK_DUMP_AFTER", "0")) or 10 ** 6, exit=False)
    acc = Accelerator()
    print(f"rank {acc.process_index} ready", flush=True)
    rank, world = acc.process_index, acc.num_processes
    torch.manual_seed(0)
    model = clipscratch.create_model("ViT-B-32")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    ddp, opt = acc.prepare(model, opt)
    # (1) equivalence, fp32: each rank holds its slice of one global batch
    n = 64
    images, tokens = global_batch(n * world, acc.device)
    local = slice(rank * n, (rank + 1) * n)
    loss = plain_step(ddp, (images[local], tokens[local]), ClipLoss(), acc.backward)
    grads = torch.cat([p.grad.flatten() for p in acc.unwrap_model(ddp).parameters()])
    mean_loss = acc.reduce(torch.tensor(loss, device=acc.device), "mean").item()
    opt.zero_grad(set_to_none=True)
    if acc.is_main_process:
        single = clipscratch.create_model("ViT-B-32")
        single.load_state_dict(state)
        single = single.to(acc.device).train()
        # the reference must not gather across ranks: the plain symmetric InfoNCE on the whole batch
        ref_loss = plain_step(single, (images, tokens), _local_clip_loss, lambda l: l.backward())
        ref_grads = torch.cat([p.grad.flatten() for p in single.parameters()])
        rel = ((grads - ref_grads).norm() / ref_grads.norm()).item()
        eq = {"loss_2gpu": mean_loss, "loss_1gpu": ref_loss, "loss_abs_diff": abs(mean_loss - ref_loss),
              "grad_rel_err": rel, "global_batch": n * world}
        print(json.dumps(eq), flush=True)
        del single
    print(f"rank {rank} equivalence done", flush=True)
    acc.wait_for_everyone()
    # (2) throughput: per-GPU batch args.batch, bf16
    torch.backends.cuda.matmul.allow_tf32 = True
    images, tokens = global_batch(args.batch, acc.device)
    t = throughput(ddp, opt, acc.backward, images, tokens)
    if acc.is_main_process:
        res = {"gpus": world, "step_s": t, "samples_per_s": world * args.batch / t, "equivalence": eq}
        one = os.path.join(args.out, "one_gpu.json")
        if os.path.exists(one):
            base = json.load(open(one))
            res["speedup_over_1gpu"] = res["samples_per_s"] / base["samples_per_s"]
            res["one_gpu_samples_per_s"] = base["samples_per_s"]
        print(json.dumps(res), flush=True)
        json.dump(res, open(os.path.join(args.out, "two_gpu.json"), "w"), indent=2)


if __name__ == "__main__":
    main()
