"""The training loop: config -> data -> model -> optimizer -> loop, top to bottom."""
from __future__ import annotations

import json
import math
import os
import random
import time
from typing import Dict, Optional

import torch
from accelerate import Accelerator
from tqdm import tqdm

from ..data.pipeline import ShardDataset, StreamSpec, batches_per_worker, expand_sources, make_loader
from ..data.prefetch import prefetch_to_device
from ..errors import ClipscratchError
from ..loading import load
from ..loss import make_loss
from ..models import create_model, get_config
from ..transforms import image_transform, normalize_images
from . import checkpoint as ckpt
from .config import TrainConfig, save_config
from .logging import MetricsLogger, plot_curves
from .optim import freeze, make_optimizer, warmup_cosine
from .step import grad_cache_step, plain_step


def build_model(cfg: TrainConfig):
    if cfg.init_from:
        model, _ = load(cfg.init_from, model=cfg.init_model or None)
        return model.train()
    if cfg.loss == "siglip" and "init_logit_bias" not in cfg.model_overrides:
        cfg.model_overrides = {**cfg.model_overrides, "init_logit_bias": -10.0, "init_logit_scale": math.log(10)}
    try:
        return create_model(cfg.model, **cfg.model_overrides)
    except (KeyError, ValueError) as e:
        raise ClipscratchError(str(e).strip("'\"")) from None


def prepare_synthetic(cfg: TrainConfig, accelerator: Accelerator) -> None:
    """Write the coloured-shapes shards once (main process), then point the config at them."""
    from ..data.make_shards import synthetic_samples, write_shards

    root = os.path.join(cfg.output_dir, "data")
    for prefix, n, seed in (("train", cfg.data.synthetic, cfg.seed), ("val", max(256, cfg.data.synthetic // 20), cfg.seed + 1)):
        info = os.path.join(root, f"{prefix}_info.json")
        if accelerator.is_main_process and not os.path.exists(info):
            size = 64
            write_shards(synthetic_samples(n, seed, False, size), root, maxcount=max(64, n // 8), total=n, overwrite=True,
                         prefix=prefix, desc=f"generating {prefix} shapes")
        accelerator.wait_for_everyone()
        with open(info) as f:
            pattern = json.load(f)["pattern"]
        if prefix == "train":
            cfg.data.train = pattern
        else:
            cfg.data.val = pattern


def count_samples(pattern: str) -> Optional[int]:
    """Samples in the shards of ``pattern`` when make_shards' *_info.json lies beside them."""
    total = 0
    for source in pattern.split("::"):
        directory = os.path.dirname(source)
        infos = [f for f in os.listdir(directory) if f.endswith("_info.json")] if os.path.isdir(directory) else []
        match = None
        for name in infos:
            with open(os.path.join(directory, name)) as f:
                info = json.load(f)
            if info.get("pattern") == source:
                match = info["samples"]
        if match is None:
            return None
        total += match
    return total


class Trainer:
    def __init__(self, cfg: TrainConfig, resume: Optional[str] = None):
        self.cfg = cfg
        self.accelerator = Accelerator(mixed_precision=cfg.precision)
        self.main = self.accelerator.is_main_process
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        if not cfg.init_from:  # fail on a bad model name before any data is generated
            try:
                get_config(cfg.model)
            except KeyError as e:
                raise ClipscratchError(str(e).strip("'\"")) from None
        if cfg.data.synthetic:
            prepare_synthetic(cfg, self.accelerator)
        if not cfg.data.train:
            raise ClipscratchError("no training data: set data.train=PATTERN (webdataset shards) or data.synthetic=N")
        self.sources = expand_sources(cfg.data.train)
        model = build_model(cfg)
        if cfg.grad_checkpointing:
            model.set_grad_checkpointing(True)
        if cfg.freeze:
            freeze(model, cfg.freeze)
        self.image_size, self.context_length = model.image_size, model.context_length
        self.loss_fn = make_loss(cfg.loss)
        self.world = self.accelerator.num_processes
        self.global_batch = cfg.data.batch_size * cfg.accum_steps * self.world
        samples = cfg.data.samples_per_epoch if cfg.data.resampled else count_samples(cfg.data.train)
        if not samples and not cfg.max_steps:
            raise ClipscratchError("cannot tell the epoch length: set max_steps, or data.resampled=true with data.samples_per_epoch")
        self.steps_per_epoch = max(1, (samples or 0) // self.global_batch) if samples else None
        self.total_steps = cfg.max_steps or self.steps_per_epoch * cfg.epochs
        optimizer = make_optimizer(model, cfg.optim, fused=self.accelerator.device.type == "cuda")
        self.scheduler = warmup_cosine(optimizer, cfg.optim.warmup_steps, self.total_steps)
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        if cfg.compile:
            self.model = torch.compile(self.model)
        self.state = ckpt.TrainState()
        if resume:
            path = ckpt.resolve(cfg.output_dir, resume)
            if path:
                self.state = ckpt.restore(path, self.core, self.optimizer, self.scheduler)
                if self.main:
                    print(f"resumed from {path} at step {self.state.step}")
        self.logger = MetricsLogger(cfg.output_dir, enabled=self.main)
        self.logger.truncate_after(self.state.step)
        self.skipped: Dict[str, int] = {}
        if self.main:
            os.makedirs(cfg.output_dir, exist_ok=True)
            save_config(cfg, os.path.join(cfg.output_dir, "train_config.yaml"))

    @property
    def core(self):
        return self.accelerator.unwrap_model(self.model)

    def epoch_loader(self, epoch: int, skip_batches: int):
        d = self.cfg.data
        spec = StreamSpec(
            sources=self.sources, weights=d.weights or [1.0] * len(self.sources), batch_size=d.batch_size,
            seed=self.cfg.seed, epoch=epoch, rank=self.accelerator.process_index, world_size=self.world,
            resampled=d.resampled, shuffle_buffer=d.shuffle_buffer, skip_batches=skip_batches, num_workers=d.workers,
            gpu_decode=d.gpu_decode,
            batches_per_worker=batches_per_worker(d.samples_per_epoch, d.batch_size, self.world, d.workers) if d.resampled else None,
        )
        # workers send uint8 pixels; to_device normalises them (4x fewer bytes through shared and pinned memory)
        transform = image_transform(self.image_size, train=True, scale=tuple(d.augment_scale), normalize=False)
        dataset = ShardDataset(spec, transform, self.context_length, d.trim_text)
        return make_loader(dataset, d.workers, pin_memory=self.accelerator.device.type == "cuda")

    def to_device(self, batch):
        device = self.accelerator.device
        tokens = batch["tokens"].to(device, non_blocking=True)
        if "jpeg_ends" in batch:  # gpu_decode: packed JPEG bytes
            from ..data.gpu_decode import gpu_transform, unpack_jpegs

            jpegs = unpack_jpegs(batch["images"], batch["jpeg_ends"])
            images, keep = gpu_transform(jpegs, self.image_size, device, batch.get("boxes"))
            if not keep.all():  # counted in the batch's own tally: this may run in the prefetch thread
                skipped = batch["skipped"]
                skipped["corrupt image"] = skipped.get("corrupt image", 0) + int((~keep).sum())
                tokens = tokens[keep.to(device)]
            return images, tokens
        images = batch["images"].to(device, non_blocking=True)
        return (normalize_images(images) if images.dtype == torch.uint8 else images), tokens

    def optimizer_step(self, micro) -> float:
        backward = self.accelerator.backward
        if len(micro) == 1:
            loss = plain_step(self.model, micro[0], self.loss_fn, backward)
        else:
            no_sync = self.accelerator.no_sync if self.world > 1 else None
            loss = grad_cache_step(self.model, micro, self.loss_fn, backward, no_sync)
        if self.cfg.optim.grad_clip > 0:
            self.accelerator.clip_grad_norm_(self.model.parameters(), self.cfg.optim.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss

    def train(self) -> dict:
        cfg, state = self.cfg, self.state
        bar = tqdm(total=self.total_steps, initial=state.step, desc="training", disable=not self.main, dynamic_ncols=True)
        self.model.train()
        t_last, samples_last = time.perf_counter(), state.samples_seen
        while state.step < self.total_steps and state.epoch < cfg.epochs:
            micro = []
            loader = self.epoch_loader(state.epoch, state.batch_in_epoch)
            # on a GPU the next batches are copied (and with gpu_decode decoded) while this one trains
            for batch, on_device in prefetch_to_device(loader, self.to_device, self.accelerator.device):
                state.batch_in_epoch += 1
                for kind, n in batch["skipped"].items():
                    self.skipped[kind] = self.skipped.get(kind, 0) + n
                micro.append(on_device)
                if len(micro) < cfg.accum_steps:
                    continue
                loss = self.optimizer_step(micro)
                micro = []
                state.step += 1
                state.samples_seen += self.global_batch
                bar.update(1)
                if state.step % cfg.log_every == 0 or state.step == self.total_steps:
                    now = time.perf_counter()
                    rate = (state.samples_seen - samples_last) / max(1e-9, now - t_last)
                    t_last, samples_last = now, state.samples_seen
                    metrics = {"loss": loss, "lr": self.scheduler.get_last_lr()[0], "scale": self.core.scale().item(),
                               "samples_per_s": rate, "epoch": state.epoch}
                    self.logger.log(state.step, metrics)
                    bar.set_postfix(loss=f"{loss:.3f}", lr=f"{metrics['lr']:.1e}", scale=f"{metrics['scale']:.1f}", sps=f"{rate:.0f}")
                if cfg.eval_every and state.step % cfg.eval_every == 0:
                    self.evaluate_and_log()
                if state.step % cfg.save_every == 0:
                    self.save()
                if state.step >= self.total_steps:
                    break
            else:
                state.epoch += 1
                state.batch_in_epoch = 0
        bar.close()
        final = self.save()
        results = self.evaluate_and_log() if self.main else {}
        if self.main:
            results["checkpoint"] = final
            results["curves"] = plot_curves(self.logger.path, os.path.join(cfg.output_dir, "curves.png"))
            results["skipped"] = dict(self.skipped)
            with open(os.path.join(cfg.output_dir, "results.json"), "w") as f:
                json.dump(results, f, indent=2)
        self.logger.close()
        self.accelerator.wait_for_everyone()
        return results

    def save(self) -> str:
        path = ""
        if self.main:
            path = ckpt.save(self.cfg.output_dir, self.core, self.optimizer, self.scheduler, self.state, self.cfg,
                             self.cfg.keep_checkpoints)
        self.accelerator.wait_for_everyone()
        return path

    def evaluate_and_log(self) -> dict:
        if not self.main:
            return {}
        from ..eval.validation import validate

        results = validate(self.core, self.cfg, self.accelerator.device)
        self.logger.log(self.state.step, results)
        return results


def run(cfg: TrainConfig, resume: Optional[str] = None) -> dict:
    return Trainer(cfg, resume).train()
