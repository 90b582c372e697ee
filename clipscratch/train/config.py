"""Training configuration: dataclasses <-> YAML, with ``key.sub=value`` overrides.

Unknown keys and values of the wrong type are one clear error naming the valid keys.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import yaml

from ..errors import ClipscratchError


@dataclass
class DataConfig:
    train: str = ""  # shard pattern(s): "a/{000..009}.tar", several sources joined with "::"
    weights: Optional[List[float]] = None  # sampling weight of each source (resampled mode)
    val: str = ""  # held-out shards for the validation loss and retrieval
    synthetic: int = 0  # >0: generate this many coloured-shape images (and a held-out set) first
    batch_size: int = 128  # per process
    workers: int = 2
    shuffle_buffer: int = 1000
    resampled: bool = False  # sample shards with replacement; epochs defined by samples_per_epoch
    samples_per_epoch: int = 0  # resampled mode: samples per epoch over all processes
    trim_text: bool = True  # cut each batch of tokens to its longest caption
    gpu_decode: bool = False  # decode and augment JPEGs on the GPU (workers only read and tokenise)
    augment_scale: List[float] = field(default_factory=lambda: [0.9, 1.0])  # RandomResizedCrop scale


@dataclass
class OptimConfig:
    lr: float = 5e-4
    weight_decay: float = 0.2
    betas: List[float] = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-6
    warmup_steps: int = 100
    grad_clip: float = 1.0  # 0 disables clipping


@dataclass
class TrainConfig:
    model: str = "small-vit"
    model_overrides: Dict[str, Any] = field(default_factory=dict)
    init_from: str = ""  # any checkpoint clipscratch.load reads (official weights included)
    init_model: str = ""  # architecture name for open_clip checkpoints in init_from
    loss: str = "clip"  # clip | siglip
    epochs: int = 1
    max_steps: int = 0  # >0: stop after this many optimizer steps
    accum_steps: int = 1  # micro-batches per step, exactly equivalent to the big batch (gradient caching)
    precision: str = "no"  # no | bf16 | fp16 (accelerate mixed precision)
    grad_checkpointing: bool = False
    compile: bool = False
    freeze: List[str] = field(default_factory=list)  # parameter-name patterns (fnmatch), e.g. "visual.*" for LiT
    seed: int = 0
    output_dir: str = "runs/default"
    save_every: int = 100  # optimizer steps between checkpoints
    keep_checkpoints: int = 2
    log_every: int = 10
    eval_every: int = 0  # >0: zero-shot / validation evaluation every N steps
    eval_zeroshot: List[str] = field(default_factory=list)  # dataset specs for evaluate.py's zero-shot, e.g. ["digits", "cifar10"]
    eval_root: str = "data"  # root of torchvision datasets named in eval_zeroshot
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def from_dict(d: dict, cls=TrainConfig, where: str = ""):
    if not isinstance(d, dict):
        raise ClipscratchError(f"config section {where or 'root'!r} must be a mapping, got {type(d).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(d) - set(fields)
    if unknown:
        raise ClipscratchError(
            f"unknown config key '{where}{sorted(unknown)[0]}'; valid keys{' in ' + where.rstrip('.') if where else ''}: "
            + ", ".join(sorted(fields))
        )
    kwargs = {}
    for name, value in d.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = from_dict(value, hint, f"{where}{name}.")
        else:
            kwargs[name] = _coerce(value, hint, f"{where}{name}")
    return cls(**kwargs)


def _coerce(value, hint, key: str):
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union:  # Optional[X]
        if value is None:
            return None
        return _coerce(value, next(a for a in args if a is not type(None)), key)
    if origin in (list, List):
        if not isinstance(value, (list, tuple)):
            value = [value]
        return [_coerce(v, args[0], key) for v in value] if args else list(value)
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            raise ClipscratchError(f"config key {key!r} expects a mapping, got {value!r}")
        return dict(value)
    if hint is Any:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ClipscratchError(f"config key {key!r} expects true/false, got {value!r}")
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):  # YAML reads "1e-3" as a string
        try:
            return float(value)
        except ValueError:
            pass
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint is str and isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    raise ClipscratchError(f"config key {key!r} expects {getattr(hint, '__name__', hint)}, got {value!r}")


def apply_overrides(d: dict, overrides: List[str]) -> dict:
    """``["optim.lr=1e-3", "data.batch_size=64"]`` -> nested dict updates (values parsed as YAML)."""
    for item in overrides:
        if "=" not in item:
            raise ClipscratchError(f"override {item!r} is not of the form key.sub=value")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw != "" else ""
        node = d
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ClipscratchError(f"override {item!r}: {part!r} is not a section")
        node[parts[-1]] = value
    return d


# The embedded default run: `accelerate launch train.py` with no arguments (configs/default.yaml
# holds the same values). Tiny ViT on generated coloured shapes: minutes on 2 CPU cores.
DEFAULT_RUN = {
    "model": "small-vit",
    "data": {"synthetic": 12000, "batch_size": 128, "workers": 2},
    "epochs": 8,
    "optim": {"lr": 1.0e-3, "warmup_steps": 40, "weight_decay": 0.1},
    "log_every": 5,
    "save_every": 100,
    "output_dir": "runs/default",
}


def load_config(path: Optional[str], overrides: List[str], base: Optional[dict] = None) -> TrainConfig:
    """Defaults, then ``base`` (a dict), then the YAML file at ``path``, then ``key=value`` overrides."""
    defaults = to_dict(TrainConfig())
    if base:
        _merge(defaults, base)
    base = defaults
    if path:
        try:
            with open(path) as f:
                loaded = yaml.safe_load(f) or {}
        except FileNotFoundError:
            raise ClipscratchError(f"{path}: config file not found") from None
        except yaml.YAMLError as e:
            raise ClipscratchError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
        _merge(base, loaded)
    return from_dict(apply_overrides(base, overrides))


def _merge(base: dict, new: dict) -> None:
    if not isinstance(new, dict):
        raise ClipscratchError("config file must hold a mapping of keys to values")
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict) and k != "model_overrides":
            _merge(base[k], v)
        else:
            base[k] = v


def save_config(cfg: TrainConfig, path: str) -> None:
    with open(path, "w") as f:
        yaml.safe_dump(to_dict(cfg), f, sort_keys=False)
