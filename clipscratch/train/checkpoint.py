"""Training checkpoints: model (safetensors, loadable by clipscratch.load) + optimizer,
scheduler, RNG and data position, written atomically; ``latest`` names the newest."""
from __future__ import annotations

import os
import random
import shutil
from dataclasses import asdict, dataclass
from typing import Optional

import torch

from ..errors import ClipscratchError
from ..loading import load_state_dict_checked, read_checkpoint, save_checkpoint
from .config import TrainConfig, save_config

STATE_NAME = "train_state.pt"


@dataclass
class TrainState:
    step: int = 0  # optimizer steps done
    epoch: int = 0
    batch_in_epoch: int = 0  # loader batches this process consumed in the current epoch
    samples_seen: int = 0


def checkpoint_dir(output_dir: str) -> str:
    return os.path.join(output_dir, "checkpoints")


def save(output_dir: str, model, optimizer, scheduler, state: TrainState, cfg: TrainConfig, keep: int, scaler=None) -> str:
    root = checkpoint_dir(output_dir)
    os.makedirs(root, exist_ok=True)
    name = f"step_{state.step:08d}"
    final, tmp = os.path.join(root, name), os.path.join(root, f".tmp-{name}")
    shutil.rmtree(tmp, ignore_errors=True)
    save_checkpoint(model, tmp)
    train_state = {
        "state": asdict(state),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng_torch": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "rng_python": list(random.getstate()[1]),
        "scaler": scaler.state_dict() if scaler is not None else {},
    }
    torch.save(train_state, os.path.join(tmp, STATE_NAME))
    save_config(cfg, os.path.join(tmp, "train_config.yaml"))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    _write_latest(root, name)
    _prune(root, keep)
    return final


def _write_latest(root: str, name: str) -> None:
    tmp = os.path.join(root, ".latest.tmp")
    with open(tmp, "w") as f:
        f.write(name + "\n")
    os.replace(tmp, os.path.join(root, "latest"))


def _prune(root: str, keep: int) -> None:
    steps = sorted(d for d in os.listdir(root) if d.startswith("step_"))
    for old in steps[:-keep] if keep > 0 else []:
        shutil.rmtree(os.path.join(root, old), ignore_errors=True)


def resolve(output_dir: str, resume: str) -> Optional[str]:
    """``latest`` -> newest checkpoint of the run (None if there is none yet), else the given path."""
    if resume != "latest":
        if not os.path.isdir(resume):
            raise ClipscratchError(f"{resume}: no such checkpoint directory")
        return resume
    pointer = os.path.join(checkpoint_dir(output_dir), "latest")
    if not os.path.exists(pointer):
        return None
    with open(pointer) as f:
        path = os.path.join(checkpoint_dir(output_dir), f.read().strip())
    return path if os.path.isdir(path) else None


def restore(path: str, model, optimizer, scheduler, scaler=None) -> TrainState:
    _, sd = read_checkpoint(path)
    load_state_dict_checked(model, sd, source=path)
    try:
        saved = torch.load(os.path.join(path, STATE_NAME), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ClipscratchError(f"{path}: no {STATE_NAME}; this is a model checkpoint, not a training checkpoint "
                               "(use init_from= to start from it)") from None
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    torch.set_rng_state(saved["rng_torch"])
    if saved["rng_cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(saved["rng_cuda"])
    random.setstate((3, tuple(saved["rng_python"]), None))
    if scaler is not None and saved["scaler"]:
        scaler.load_state_dict(saved["scaler"])
    return TrainState(**saved["state"])
