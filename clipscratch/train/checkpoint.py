"""Training checkpoints that never lose work.

A checkpoint is a folder ``output_dir/checkpoints/step_XXXXXXXX`` with the model (safetensors,
loadable by ``clipscratch.load``), ``train_state.pt`` (optimizer, scheduler, every rank's RNG
and data position) and the run's config, written under a temporary name and renamed when
complete; ``latest`` names the newest. The rules:

* a run starts in an output folder only if no run is there, or with ``--resume`` (continue it)
  or ``--overwrite`` (remove that run's checkpoints, logs and curves first);
* pruning keeps the newest ``keep_checkpoints`` and never touches a checkpoint newer than the
  run's current step;
* ``--resume latest`` takes the newest checkpoint that loads completely, naming any it skips.
"""
from __future__ import annotations

import os
import random
import shutil
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Tuple

import torch

from ..errors import ClipscratchError
from ..loading import read_checkpoint, save_checkpoint
from .config import TrainConfig, save_config

STATE_NAME = "train_state.pt"
RUN_FILES = ("metrics.jsonl", "curves.png", "results.json", "train_config.yaml")  # besides checkpoints/ and tensorboard/


@dataclass
class TrainState:
    step: int = 0  # optimizer steps done
    epoch: int = 0
    samples_seen: int = 0
    # this rank's data position in the current epoch: worker -> [raw samples consumed, batches delivered],
    # and the worker whose batch comes next
    positions: Dict[int, List[int]] = field(default_factory=dict)
    next_worker: int = 0


@dataclass
class Resumable:
    path: str
    model_state: Dict[str, torch.Tensor]
    train_state: dict


def checkpoint_dir(output_dir: str) -> str:
    return os.path.join(output_dir, "checkpoints")


def _steps(root: str) -> List[Tuple[int, str]]:
    """(step, folder) of the complete checkpoints under ``root``, newest first."""
    if not os.path.isdir(root):
        return []
    found = []
    for name in os.listdir(root):
        if name.startswith("step_") and name[5:].isdigit():
            found.append((int(name[5:]), os.path.join(root, name)))
    return sorted(found, reverse=True)


def claim_output_dir(output_dir: str, resume: Optional[str], overwrite: bool) -> None:
    """Refuse to start a fresh run over another run's work (unless ``overwrite``)."""
    checkpoints = _steps(checkpoint_dir(output_dir))
    logged = [f for f in RUN_FILES if os.path.exists(os.path.join(output_dir, f))]
    if resume or not (checkpoints or logged):
        return
    if not overwrite:
        what = f"checkpoints up to step {checkpoints[0][0]}" if checkpoints else "logs of a run (" + ", ".join(logged) + ")"
        raise ClipscratchError(f"{output_dir} already holds a training run ({what}); continue it with --resume latest, "
                               f"choose another output_dir=..., or pass --overwrite to start over")
    shutil.rmtree(checkpoint_dir(output_dir), ignore_errors=True)
    shutil.rmtree(os.path.join(output_dir, "tensorboard"), ignore_errors=True)
    for f in logged:
        os.remove(os.path.join(output_dir, f))


def save(output_dir: str, model, optimizer, scheduler, state: TrainState, ranks: List[dict], cfg: TrainConfig,
         keep: int, scaler=None) -> str:
    """Write the checkpoint of ``state.step`` (main process); ``ranks`` holds every rank's RNG
    states and data positions."""
    root = checkpoint_dir(output_dir)
    os.makedirs(root, exist_ok=True)
    name = f"step_{state.step:08d}"
    final, tmp = os.path.join(root, name), os.path.join(root, f".tmp-{name}")
    shutil.rmtree(tmp, ignore_errors=True)
    save_checkpoint(model, tmp)
    train_state = {
        "state": {k: v for k, v in asdict(state).items() if k not in ("positions", "next_worker")},
        "ranks": ranks,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else {},
    }
    torch.save(train_state, os.path.join(tmp, STATE_NAME))
    save_config(cfg, os.path.join(tmp, "train_config.yaml"))
    shutil.rmtree(final, ignore_errors=True)  # only a checkpoint of this very step, from a run we resumed
    os.replace(tmp, final)
    _write_latest(root, name)
    for step, path in _steps(root)[keep:]:
        if step <= state.step:
            shutil.rmtree(path, ignore_errors=True)
    return final


def rank_state(state: TrainState, data_workers: int) -> dict:
    """This rank's part of a checkpoint: RNG states and data position."""
    return {
        "rng_torch": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "rng_python": list(random.getstate()[1]),
        "positions": {int(w): list(p) for w, p in state.positions.items()},
        "next_worker": state.next_worker,
        "workers": data_workers,
    }


def _write_latest(root: str, name: str) -> None:
    tmp = os.path.join(root, ".latest.tmp")
    with open(tmp, "w") as f:
        f.write(name + "\n")
    os.replace(tmp, os.path.join(root, "latest"))


def _load(path: str) -> Resumable:
    """The whole checkpoint, or ClipscratchError saying what in it cannot be read."""
    _, model_state = read_checkpoint(path)
    state_path = os.path.join(path, STATE_NAME)
    if not os.path.exists(state_path):
        raise ClipscratchError(f"{path}: no {STATE_NAME}; this is a model checkpoint, not a training checkpoint "
                               "(use init_from= to start from it)")
    try:
        train_state = torch.load(state_path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated or corrupt: any of pickle's, zipfile's or torch's errors
        raise ClipscratchError(f"{state_path}: cannot be read ({type(e).__name__})") from None
    if not isinstance(train_state, dict) or "ranks" not in train_state:
        raise ClipscratchError(f"{state_path}: not a clipscratch training state")
    return Resumable(path, model_state, train_state)


def find_resumable(output_dir: str, resume: str) -> Optional[Resumable]:
    """``latest``: the newest checkpoint of the run that loads completely (None if there is none
    yet; each one skipped is named). A path: that checkpoint, if no newer one of this run would
    be overwritten by continuing from it."""
    if resume != "latest":
        if not os.path.isdir(resume):
            raise ClipscratchError(f"{resume}: no such checkpoint directory")
        loaded = _load(resume)
        step = loaded.train_state["state"]["step"]
        newer = [s for s, p in _steps(checkpoint_dir(output_dir)) if s > step and not os.path.samefile(p, resume)]
        if newer:
            raise ClipscratchError(f"{output_dir} holds checkpoints newer than {resume} (step {newer[0]}); continuing from "
                                   f"it would overwrite them: resume latest, or set another output_dir=...")
        return loaded
    for step, path in _steps(checkpoint_dir(output_dir)):
        try:
            return _load(path)
        except ClipscratchError as e:
            print(f"skipping checkpoint {path}: {e}")
    return None


def restore(loaded: Resumable, model, optimizer, scheduler, rank: int, data_workers: int, scaler=None) -> TrainState:
    from ..loading import load_state_dict_checked

    load_state_dict_checked(model, loaded.model_state, source=loaded.path)
    saved = loaded.train_state
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    if scaler is not None and saved["scaler"]:
        scaler.load_state_dict(saved["scaler"])
    if rank >= len(saved["ranks"]):
        raise ClipscratchError(f"{loaded.path} was written by {len(saved['ranks'])} processes; resume it with as many")
    mine = saved["ranks"][rank]
    if mine["workers"] != data_workers and mine["positions"]:
        raise ClipscratchError(f"{loaded.path} was written with data.workers={mine['workers']}; resume with the same number "
                               f"(each worker's place in its shards is saved)")
    torch.set_rng_state(mine["rng_torch"])
    if mine["rng_cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(mine["rng_cuda"])
    random.setstate((3, tuple(mine["rng_python"]), None))
    return TrainState(**saved["state"], positions={int(w): list(p) for w, p in mine["positions"].items()},
                      next_worker=mine["next_worker"])
