"""Training configuration: frozen dataclasses, resolved once.

``resolve(path, overrides)`` = defaults, then the YAML file, then ``key.sub=value`` overrides,
then derived values (SigLIP's initial bias and temperature), then checks of every value; the
result is frozen and saved with the run. Unknown keys, values of the wrong type and values out
of range are one clear error naming the key.
"""
from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import yaml

from ..errors import ClipscratchError


@dataclass(frozen=True)
class GenerateConfig:
    """Data made by a registered generator before training (``train/data_generators.py``)."""

    kind: str = ""  # "shapes": demos/shapes.py writes the data.train and data.val shards if they are missing
    train_samples: int = 0
    val_samples: int = 0


@dataclass(frozen=True)
class DataConfig:
    train: str = ""  # shard pattern(s): "a/{000..009}.tar", several sources joined with "::"
    weights: Optional[List[float]] = None  # sampling weight of each source (resampled mode)
    val: str = ""  # held-out shards for the evaluators that read them (e.g. retrieval)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    batch_size: int = 128  # per process
    workers: int = 2
    shuffle_buffer: int = 1000
    resampled: bool = False  # sample shards with replacement; epochs defined by samples_per_epoch
    samples_per_epoch: int = 0  # resampled mode: samples per epoch over all processes
    trim_text: bool = True  # cut each batch of tokens to its longest caption
    gpu_decode: bool = False  # decode and augment JPEGs on the GPU (workers only read and tokenise)
    # gpu_decode's decoder: torchvision (nvJPEG; fed training faster in every H100 run, docs/benchmarks.md),
    # nvimgcodec (the hardware JPEG engines, pip install ".[gpu]"), auto (nvimgcodec when installed)
    jpeg_decoder: str = "torchvision"
    augment_scale: List[float] = field(default_factory=lambda: [0.9, 1.0])  # RandomResizedCrop scale


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 5e-4
    weight_decay: float = 0.2
    betas: List[float] = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-6
    warmup_steps: int = 100
    grad_clip: float = 1.0  # 0 disables clipping


@dataclass(frozen=True)
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
    grad_checkpointing: bool = False  # keep each block's input only: one more forward, the least memory
    # keep each MLP's input only: about half the activation memory of a block, for a third more MLP matrix products
    recompute_mlp: bool = False
    # each caption costs its own length (exact; models/packing.py, packed on the host so the compiled step never
    # waits); false: each batch cut to its longest caption. Packed was faster eager and compiled (docs/benchmarks.md)
    pack_text: bool = True
    fp8: bool = False  # attention and MLP projections in FP8 (models/fp8.py; Hopper GPUs, with precision=bf16)
    # with compile on a CUDA GPU (Hopper): the image tower's q/k/v and MLP-in projections in FP8 with delayed scaling,
    # the one-pass backward kernels writing the FP8 copies of their gradients (models/fp8_delayed.py); a first step
    # measures the scales. ViT-B/16 steps 4% faster, 1.41x open_clip with text_stream; its loss tracks bf16's
    # (docs/benchmarks.md, parts 108-114)
    fp8_delayed: bool = False
    compile: bool = False
    # with compile, on a CUDA GPU with Triton: each MLP's bias gradient summed in the pass that computes its hidden
    # gradient (models/bias_activation.py): 1.7% faster compiled steps on ViT-B/16, exact; without compile it is not
    # used (eager, its unfused forward made the step 5-18% slower). docs/benchmarks.md, parts 64-78
    fused_activation: bool = True
    # on a CUDA GPU with Triton, compiled or not: each attention's q/k/v bias gradient summed in the pass that gathers
    # the heads' gradients (models/qkv_projection.py), exact; not for packed captions or with fp8. ViT-B/16 steps 1.5%
    # faster compiled, 8% eager (docs/benchmarks.md, parts 81-84)
    fused_qkv: bool = True
    # with compile: the step's forward and backward replayed as CUDA graphs (torch.compile's reduce-overhead), so the
    # host launches a step in a few ms and busy data workers cannot slow it; packed text is filled to a multiple of
    # 256 tokens (models/packing.py) so that a few recordings cover every batch
    cuda_graphs: bool = False
    # on a CUDA GPU: the text tower on a side CUDA stream beside the image tower (models/tower_stream.py), the same
    # kernels; with compile, each tower is compiled apart (the loss stays eager), not with cuda_graphs. ViT-B/16 steps
    # 1.3-1.6% faster compiled, 5% eager; ViT-B/32's launch-bound compiled step 17% slower (docs/benchmarks.md, 90-96);
    # under DDP the text's gradients are accumulated and all-reduced on the main stream (part 103)
    text_stream: bool = False
    freeze: List[str] = field(default_factory=list)  # parts or parameter patterns (models/parts.py), e.g. "image" for LiT
    seed: int = 0
    output_dir: str = "runs/default"
    save_every: int = 100  # optimizer steps between checkpoints
    keep_checkpoints: int = 2
    log_every: int = 10
    eval_every: int = 0  # >0: run the evaluators every N steps (always once at the end)
    evals: Dict[str, Dict[str, Any]] = field(default_factory=dict)  # evaluator name -> its options (train/evaluators.py)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def from_dict(d: dict, cls=TrainConfig, where: str = ""):
    if not isinstance(d, dict):
        raise ClipscratchError(f"config section {where.rstrip('.') or 'root'!r} must be a mapping, got {type(d).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - fields
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
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ClipscratchError(f"config key {key!r} expects a mapping, got {value!r}")
        return {k: ({} if v is None else v) for k, v in value.items()}
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
    if hint is str and isinstance(value, bool):  # a YAML file's `precision: no` arrives as False
        return "yes" if value else "no"
    if hint is str and isinstance(value, (str, int, float)):
        return str(value)
    raise ClipscratchError(f"config key {key!r} expects {getattr(hint, '__name__', hint)}, got {value!r}")


def apply_overrides(d: dict, overrides: List[str]) -> dict:
    """``["optim.lr=1e-3", "data.batch_size=64"]`` -> nested dict updates (values parsed as YAML)."""
    for item in overrides:
        if "=" not in item:
            raise ClipscratchError(f"override {item!r} is not of the form key.sub=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        if isinstance(value, bool) and raw.strip().lower() not in ("true", "false"):
            value = raw.strip()  # YAML 1.1 reads no/yes/on/off as booleans: keep the word (precision=no)
        node = d
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ClipscratchError(f"override {item!r}: {part!r} is not a section")
        node[parts[-1]] = value
    return d


def _merge(base: dict, new: dict, where: str = "") -> None:
    if not isinstance(new, dict):
        raise ClipscratchError(f"config {where or 'file'} must hold a mapping of keys to values")
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict) and k not in ("model_overrides", "evals"):
            _merge(base[k], v, f"section {k!r}")
        else:
            base[k] = v


def read_yaml(path: str) -> dict:
    try:
        with open(path) as f:
            return yaml.safe_load(f) or {}
    except FileNotFoundError:
        raise ClipscratchError(f"{path}: config file not found") from None
    except yaml.YAMLError as e:
        raise ClipscratchError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None


def resolve(path: Optional[str], overrides: List[str] = ()) -> TrainConfig:
    """The run's configuration, resolved once: defaults, YAML file, overrides, derived values, checks."""
    merged = to_dict(TrainConfig())
    if path:
        loaded = read_yaml(path)
        if isinstance(loaded, dict) and {"captioner", "lm"} & set(loaded):
            raise ClipscratchError(f"{path} is a captioning config: run python -m clipscratch.caption train --config {path}")
        _merge(merged, loaded)
    cfg = from_dict(apply_overrides(merged, list(overrides)))
    cfg = _derive(cfg)
    check(cfg)
    return cfg


def _derive(cfg: TrainConfig) -> TrainConfig:
    """Values that follow from others: SigLIP starts at bias -10 and temperature 10 (as its paper)."""
    if cfg.loss == "siglip" and not cfg.init_from and "init_logit_bias" not in cfg.model_overrides:
        overrides = {"init_logit_bias": -10.0, "init_logit_scale": math.log(10), **cfg.model_overrides}
        cfg = dataclasses.replace(cfg, model_overrides=overrides)
    return cfg


def _require(ok: bool, key: str, rule: str, value) -> None:
    if not ok:
        raise ClipscratchError(f"config key {key!r} must be {rule}, got {value!r}")


def check(cfg: TrainConfig) -> None:
    """Every value in range, one clear error naming the first that is not."""
    from .evaluators import check_evals
    from .generators import check_generate

    o, d = cfg.optim, cfg.data
    _require(o.lr > 0, "optim.lr", "> 0", o.lr)
    _require(o.weight_decay >= 0, "optim.weight_decay", ">= 0", o.weight_decay)
    _require(len(o.betas) == 2 and all(0 <= b < 1 for b in o.betas), "optim.betas", "two numbers in [0, 1)", o.betas)
    _require(o.eps > 0, "optim.eps", "> 0", o.eps)
    _require(o.warmup_steps >= 0, "optim.warmup_steps", ">= 0", o.warmup_steps)
    _require(o.grad_clip >= 0, "optim.grad_clip", ">= 0 (0 disables clipping)", o.grad_clip)
    _require(d.batch_size >= 1, "data.batch_size", ">= 1", d.batch_size)
    _require(d.workers >= 0, "data.workers", ">= 0", d.workers)
    _require(d.shuffle_buffer >= 0, "data.shuffle_buffer", ">= 0", d.shuffle_buffer)
    _require(d.samples_per_epoch >= 0, "data.samples_per_epoch", ">= 0", d.samples_per_epoch)
    _require(len(d.augment_scale) == 2 and 0 < d.augment_scale[0] <= d.augment_scale[1] <= 1, "data.augment_scale",
             "[low, high] with 0 < low <= high <= 1", d.augment_scale)
    _require(d.weights is None or all(w > 0 for w in d.weights), "data.weights", "positive numbers", d.weights)
    _require(d.jpeg_decoder in ("auto", "nvimgcodec", "torchvision"), "data.jpeg_decoder", "one of auto, nvimgcodec, torchvision",
             d.jpeg_decoder)
    _require(d.weights is None or len(d.weights) == len(d.train.split("::")), "data.weights",
             "one weight per source of data.train", d.weights)
    _require(cfg.epochs >= 1, "epochs", ">= 1", cfg.epochs)
    _require(cfg.max_steps >= 0, "max_steps", ">= 0 (0: run all epochs)", cfg.max_steps)
    _require(cfg.accum_steps >= 1, "accum_steps", ">= 1", cfg.accum_steps)
    _require(not cfg.cuda_graphs or cfg.compile, "cuda_graphs", "false without compile=true", cfg.cuda_graphs)
    _require(not cfg.cuda_graphs or cfg.accum_steps == 1, "cuda_graphs",
             "false with accum_steps > 1 (gradient caching runs every micro-batch forward before the backwards)", cfg.cuda_graphs)
    _require(not (cfg.text_stream and cfg.cuda_graphs), "text_stream",
             "false with cuda_graphs=true (a recording of the whole step holds one stream)", cfg.text_stream)
    _require(cfg.precision in ("no", "bf16", "fp16"), "precision", "one of no, bf16, fp16", cfg.precision)
    if cfg.fp8_delayed:  # its projections are the one-pass backward kernels' (models/fp8_delayed.py)
        for key, needed in (("compile", True), ("fused_activation", True), ("fused_qkv", True), ("fp8", False),
                            ("cuda_graphs", False)):
            _require(getattr(cfg, key) == needed, "fp8_delayed", f"false unless {key}={str(needed).lower()}",
                     cfg.fp8_delayed)
        _require(cfg.precision == "bf16", "fp8_delayed", "false unless precision=bf16", cfg.fp8_delayed)
    _require(cfg.loss in ("clip", "siglip"), "loss", "one of clip, siglip", cfg.loss)
    for key in ("save_every", "keep_checkpoints", "log_every"):
        _require(getattr(cfg, key) >= 1, key, ">= 1", getattr(cfg, key))
    _require(cfg.eval_every >= 0, "eval_every", ">= 0 (0: only at the end)", cfg.eval_every)
    _require(bool(d.train), "data.train", "a shard pattern (webdataset .tar files)", d.train)
    _require(not d.resampled or d.samples_per_epoch > 0 or cfg.max_steps > 0, "data.samples_per_epoch",
             "> 0 with data.resampled=true (or set max_steps)", d.samples_per_epoch)
    if not cfg.init_from:
        from ..models import get_config

        try:
            get_config(cfg.model)
        except KeyError as e:
            raise ClipscratchError(str(e).strip("'\"")) from None
    check_generate(d)
    check_evals(cfg)


def dump(cfg: TrainConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def save_config(cfg: TrainConfig, path: str) -> None:
    with open(path, "w") as f:
        f.write(dump(cfg))
