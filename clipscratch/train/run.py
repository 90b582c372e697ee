"""One training run, top to bottom:

    processes and seeds -> output folder -> data -> model -> optimizer -> resume
    -> evaluators -> loop (step, log, evaluate, checkpoint) -> final checkpoint and evaluation

The configuration arrives resolved and frozen (``config.resolve``) and is saved with the run.
Everything specific to a dataset or demonstration is plugged in by the config: data
generators (``generators.py``) and evaluators (``evaluators.py``).
"""
from __future__ import annotations

import functools
import json
import os
import random
import time
from collections import Counter
from typing import List, Optional

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from tqdm import tqdm

from ..data.pipeline import (ShardDataset, StreamSpec, batches_per_worker, expand_sources, make_loader,
                             planned_batches, shard_counts)
from ..data.prefetch import prefetch_to_device, to_device, waited
from ..errors import ClipscratchError
from ..loading import load
from ..loss import make_loss
from ..models import create_model
from ..models.fp8_delayed import update_scales
from ..models.packing import pack_tokens
from ..models.tower_stream import expect_ddp_accumulation
from ..transforms import image_transform
from . import checkpoint as ckpt
from .config import TrainConfig, save_config
from .evaluators import make_evaluators
from .generators import generate_data
from .logging import MetricsLogger, gpu_memory, plot_curves
from .optim import freeze, make_optimizer, warmup_cosine
from .step import optimizer_step, plain_step


def run(cfg: TrainConfig, resume: Optional[str] = None, overwrite: bool = False) -> dict:
    # ---- processes, seeds, output folder
    accelerator = Accelerator(mixed_precision=cfg.precision)
    main, device, world, rank = accelerator.is_main_process, accelerator.device, accelerator.num_processes, accelerator.process_index
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    if main:
        ckpt.claim_output_dir(cfg.output_dir, resume, overwrite)
        os.makedirs(cfg.output_dir, exist_ok=True)
        save_config(cfg, os.path.join(cfg.output_dir, "train_config.yaml"))
    accelerator.wait_for_everyone()

    # ---- data
    if main:
        generate_data(cfg.data, cfg.seed)
    accelerator.wait_for_everyone()
    sources = expand_sources(cfg.data.train)
    counts = shard_counts(sources)
    epoch_steps = [steps_in_epoch(cfg, sources, counts, world, e) for e in range(cfg.epochs)]
    if not cfg.max_steps and None in epoch_steps:
        raise ClipscratchError("cannot tell the epoch length (the shards have no make_shards *_info.json): set max_steps, "
                               "or data.resampled=true with data.samples_per_epoch")
    total_steps = cfg.max_steps or sum(epoch_steps)
    if total_steps == 0:
        raise ClipscratchError(f"an epoch of data.train holds fewer than {cfg.data.batch_size * cfg.accum_steps} samples per "
                               f"process and worker: lower data.batch_size or data.workers")
    global_batch = cfg.data.batch_size * cfg.accum_steps * world

    # ---- model
    if cfg.fp8_delayed and device.type != "cuda":
        raise ClipscratchError("fp8_delayed=true needs a CUDA GPU with Triton (Hopper: FP8 products); set it false here")
    model = build_model(cfg)
    image_size, context_length = model.image_size, model.context_length
    loss_fn = make_loss(cfg.loss)

    # ---- optimizer
    optimizer = make_optimizer(model, cfg.optim, fused=device.type == "cuda")
    scheduler = warmup_cosine(optimizer, cfg.optim.warmup_steps, total_steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    core = accelerator.unwrap_model(model)  # the CLIP itself: checkpoints and evaluators use it
    model = compile_for_training(model, core, cfg)
    if cfg.text_stream:
        expect_ddp_accumulation(world)  # DDP accumulates the text's gradients on the main stream (tower_stream.py)
    bucket = 256 if cfg.cuda_graphs else 0  # packed text filled to a few shapes: one graph recording each
    pack = functools.partial(pack_tokens, bucket=bucket, context_length=context_length) if cfg.pack_text else None

    # ---- resume
    state = ckpt.TrainState()
    if resume:
        loaded = ckpt.find_resumable(cfg.output_dir, resume)
        if loaded is not None:
            state = ckpt.restore(loaded, core, optimizer, scheduler, rank, cfg.data.workers, accelerator.scaler)
            if main:
                print(f"resumed from {loaded.path} at step {state.step}")

    # ---- evaluators and logs
    evaluators = make_evaluators(cfg) if main else []
    logger = MetricsLogger(cfg.output_dir, enabled=main)
    if resume:
        logger.truncate_after(state.step)  # records after the checkpoint are written again

    def evaluate() -> dict:
        results = {}
        if main:
            core.eval()
            for evaluator in evaluators:
                results.update(evaluator(core, device))
            model.train()
            logger.log(state.step, {k: v for k, v in results.items() if not k.startswith("chance_")})
        accelerator.wait_for_everyone()
        return results

    def save() -> str:
        ranks = gather_object([ckpt.rank_state(state, cfg.data.workers)])
        path = ckpt.save(cfg.output_dir, core, optimizer, scheduler, state, ranks, cfg, cfg.keep_checkpoints,
                         accelerator.scaler) if main else ""
        accelerator.wait_for_everyone()
        return path

    # ---- loop
    skipped: Counter = Counter()
    fp8_unmeasured = cfg.fp8_delayed  # the scales are measured again after a resume (they are not checkpointed)
    bar = tqdm(total=total_steps, initial=state.step, desc="training", disable=not main, dynamic_ncols=True)
    model.train()
    last_time, last_samples, saved_at = time.perf_counter(), state.samples_seen, None
    wait_ms: List[float] = []  # how long the loop waited for each batch since the last log
    try:  # the bar is closed before any error is printed
        while state.step < total_steps and state.epoch < cfg.epochs:
            epoch_end = sum(epoch_steps[: state.epoch + 1]) if epoch_steps[state.epoch] is not None else total_steps
            loader = epoch_loader(cfg, sources, counts, state, rank, world, image_size, context_length,
                                  pin_memory=device.type == "cuda")
            micro, batches = [], 0
            prepared = prefetch_to_device(loader, lambda b: to_device(b, device, image_size, cfg.data.jpeg_decoder, pack), device)
            for batch, on_device in waited(iter(prepared), wait_ms):
                skipped.update(batch["skipped"])
                if on_device is None:  # a worker's closing tally
                    continue
                batches += 1
                state.positions[batch["worker"]] = list(batch["position"])
                state.next_worker = (batch["worker"] + 1) % max(1, cfg.data.workers)
                micro.append(on_device)
                if len(micro) < cfg.accum_steps:
                    continue
                if cfg.cuda_graphs:
                    torch.compiler.cudagraph_mark_step_begin()  # the last step's graph outputs are done with
                if fp8_unmeasured:  # the delayed FP8 scales' first step only measures them (models/fp8_delayed.py)
                    plain_step(model, micro[0], loss_fn, accelerator.backward)
                    optimizer.zero_grad(set_to_none=True)
                    update_scales(core)
                    fp8_unmeasured = False
                loss = optimizer_step(model, micro, loss_fn, accelerator, optimizer, scheduler, cfg.optim.grad_clip)
                if cfg.fp8_delayed:
                    update_scales(core)  # this step's maxima scale the next one
                micro = []
                state.step += 1
                state.samples_seen += global_batch
                bar.update(1)
                if state.step % cfg.log_every == 0 or state.step == total_steps:
                    now = time.perf_counter()
                    rate = (state.samples_seen - last_samples) / max(1e-9, now - last_time)
                    last_time, last_samples = now, state.samples_seen
                    loss_value, lr, scale = loss.item(), scheduler.get_last_lr()[0], core.scale().item()
                    logger.log(state.step, {"loss": loss_value, "lr": lr, "scale": scale, "samples_per_s": rate, "epoch": state.epoch,
                                            "data_wait_s": sum(wait_ms) / 1000,  # since the last log: data-bound if large
                                            **gpu_memory(accelerator.device)})
                    wait_ms.clear()
                    bar.set_postfix(loss=f"{loss_value:.3f}", lr=f"{lr:.1e}", scale=f"{scale:.1f}", sps=f"{rate:.0f}")
                if cfg.eval_every and state.step % cfg.eval_every == 0 and state.step < total_steps:
                    evaluate()
                if state.step % cfg.save_every == 0:
                    saved_at = save()
                if state.step >= min(epoch_end, total_steps):
                    break
            if batches == 0 and not state.positions:
                raise ClipscratchError(f"epoch {state.epoch} of data.train yielded no usable batch"
                                       + (f" ({describe_skipped(skipped)})" if skipped else "") + "; check the shards")
            state.epoch += 1
            state.positions, state.next_worker = {}, 0
    finally:
        bar.close()

    # ---- final checkpoint and evaluation
    if not saved_at or not saved_at.endswith(f"step_{state.step:08d}"):
        saved_at = save()
    results = evaluate()
    if main:
        panels = [p for evaluator in evaluators for p in evaluator.panels]
        results.update(checkpoint=saved_at, skipped=dict(skipped),
                       curves=plot_curves(logger.path, os.path.join(cfg.output_dir, "curves.png"), panels))
        with open(os.path.join(cfg.output_dir, "results.json"), "w") as f:
            json.dump(results, f, indent=2)
    logger.close()
    accelerator.wait_for_everyone()
    return results


def steps_in_epoch(cfg: TrainConfig, sources, counts, world: int, epoch: int) -> Optional[int]:
    """Optimizer steps every rank can take in this epoch (the fewest any rank's loader yields),
    or None when the shards' sample counts are unknown."""
    d = cfg.data
    if d.resampled:
        per_rank = batches_per_worker(d.samples_per_epoch, d.batch_size, world, d.workers) * max(1, d.workers) if d.samples_per_epoch else None
    else:
        batches = planned_batches(sources, counts, cfg.seed, epoch, world, d.workers, d.batch_size)
        per_rank = min(batches) if batches is not None else None
    return None if per_rank is None else per_rank // cfg.accum_steps


def epoch_loader(cfg: TrainConfig, sources, counts, state: ckpt.TrainState, rank: int, world: int, image_size: int,
                 context_length: int, pin_memory: bool):
    d = cfg.data
    spec = StreamSpec(
        sources=sources, weights=d.weights or [1.0] * len(sources), batch_size=d.batch_size, seed=cfg.seed,
        epoch=state.epoch, rank=rank, world_size=world, resampled=d.resampled, shuffle_buffer=d.shuffle_buffer,
        resume={w: tuple(p) for w, p in state.positions.items()}, first_worker=state.next_worker, shard_samples=counts,
        gpu_decode=d.gpu_decode,
        batches_per_worker=batches_per_worker(d.samples_per_epoch, d.batch_size, world, d.workers) if d.resampled else None,
    )
    # workers send uint8 pixels; to_device normalises them on the device
    transform = image_transform(image_size, train=True, scale=tuple(d.augment_scale), normalize=False)
    return make_loader(ShardDataset(spec, transform, context_length, d.trim_text), d.workers, pin_memory=pin_memory)


def build_model(cfg: TrainConfig):
    """The model the run trains: created or loaded, with the config's memory and speed options
    and its frozen parts."""
    model = initial_model(cfg)
    model.set_grad_checkpointing(cfg.grad_checkpointing)
    model.set_mlp_recompute(cfg.recompute_mlp)
    model.set_text_packing(cfg.pack_text)
    model.set_fp8(cfg.fp8)
    model.set_fp8_delayed(cfg.fp8_delayed)
    model.set_fused_activation(cfg.compile and cfg.fused_activation)  # faster compiled only (config.py)
    model.set_fused_qkv(cfg.fused_qkv)  # faster eager and compiled
    model.set_text_stream(cfg.text_stream)
    if cfg.freeze:
        freeze(model, cfg.freeze)
    return model


def compile_for_training(model, core, cfg: TrainConfig):
    """The model the loop calls: with compile, the whole of it compiled (under CUDA graphs with
    cuda_graphs), or with text_stream each tower of ``core`` compiled apart so that ``forward``
    can put the text tower on its side stream; as it is otherwise."""
    if not cfg.compile:
        return model
    if cfg.text_stream:
        core.compile_towers()
        return model
    return torch.compile(model, mode="reduce-overhead" if cfg.cuda_graphs else None)


def initial_model(cfg: TrainConfig):
    if cfg.init_from:
        model, _ = load(cfg.init_from, model=cfg.init_model or None)
        return model.train()
    try:
        return create_model(cfg.model, **cfg.model_overrides)
    except (KeyError, ValueError, TypeError) as e:
        raise ClipscratchError(f"model_overrides: {str(e).strip(chr(39) + chr(34))}") from None


def describe_skipped(skipped) -> str:
    return ", ".join(f"{n} {kind}" for kind, n in sorted(skipped.items()))


def report(results: dict) -> List[str]:
    """The final metrics as lines, each with its chance level when the evaluator gave one."""
    lines = ["results on held-out data:"]
    for key, value in results.items():
        if isinstance(value, float) and not key.startswith("chance_"):
            chance = results.get(f"chance_{key}")
            lines.append(f"  {key:<36}{value:8.3f}" + (f"   (chance {chance:.3f})" if chance else ""))
    if results.get("skipped"):
        lines.append(f"  skipped input: {describe_skipped(results['skipped'])}")
    lines.append(f"checkpoint: {results['checkpoint']}  (clipscratch.load() reads it)")
    if results.get("curves"):
        lines.append(f"training curves: {results['curves']}")
    return lines
