"""``load(path_or_name)``: one entry point for every checkpoint format, and clipscratch's own save.

Formats, detected from the file:

* clipscratch: a directory (or ``.safetensors`` file) with ``config.json`` whose ``format`` is ``clipscratch``,
  or a training run's output folder (its newest checkpoint);
* Hugging Face ``transformers`` CLIPModel directories (``config.json`` + ``model.safetensors`` or ``pytorch_model.bin``);
* OpenAI's released files: TorchScript archives or plain state dicts (architecture inferred from the shapes);
* open_clip checkpoints, plain or training (``{"state_dict": {"module.…"}}``); ``model=`` names the architecture;
* a name from OpenAI's release list (``ViT-B/32``), downloaded with its SHA256 checked into the cache.

No code from a file is ever run: pickles go through ``torch.load(weights_only=True)``
and TorchScript archives through a tensor-only unpickler.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import tempfile
import urllib.request
from typing import Callable, Dict, Optional, Tuple, Union

import torch
from safetensors.torch import load_file, save_file

from .convert import hf as hf_convert
from .convert import openai as openai_convert
from .convert import open_clip as open_clip_convert
from .convert.torchscript import is_torchscript_archive, read_torchscript_tensors
from .errors import ClipscratchError
from .models import CLIP, CLIPConfig, config_from_dict, config_to_dict, get_config
from .models.registry import OPENAI_URLS
from .transforms import image_transform

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def default_cache_dir() -> str:
    return os.environ.get("CLIPSCRATCH_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "clipscratch"))


def load(
    path_or_name: str,
    model: Optional[Union[str, CLIPConfig]] = None,
    device: Union[str, torch.device] = "cpu",
    dtype: torch.dtype = torch.float32,
    cache_dir: Optional[str] = None,
) -> Tuple[CLIP, Callable]:
    """Load any supported checkpoint. Returns ``(model in eval mode, eval preprocess)``."""
    path = str(path_or_name)
    if not os.path.exists(path):
        if path in OPENAI_URLS:
            path = download_openai(path, cache_dir or default_cache_dir())
        else:
            raise ClipscratchError(
                f"{path}: no such file or directory, and not an OpenAI model name ({', '.join(OPENAI_URLS)})"
            )
    cfg, sd = read_checkpoint(path, model)
    clip = CLIP(cfg, init=False)
    load_state_dict_checked(clip, sd, source=path)
    clip = clip.to(device=device, dtype=dtype).eval()
    return clip, image_transform(cfg.vision.image_size)


def read_checkpoint(path: str, model: Optional[Union[str, CLIPConfig]] = None) -> Tuple[CLIPConfig, Dict[str, torch.Tensor]]:
    """(config, clipscratch-layout state dict) of any supported checkpoint."""
    try:
        named_cfg = get_config(model) if isinstance(model, str) else model
    except KeyError as e:
        raise ClipscratchError(str(e).strip("'\"")) from None
    if os.path.isdir(path):
        return _read_directory(path, named_cfg)
    if path.endswith(".safetensors"):
        beside = os.path.join(os.path.dirname(path), CONFIG_NAME)
        if os.path.exists(beside) and _is_clipscratch_config(beside):
            return _read_clipscratch(os.path.dirname(path), path)
        sd = _safetensors(path)
    elif is_torchscript_archive(path):
        sd = read_torchscript_tensors(path)
        if named_cfg is None:
            cfg = openai_convert.infer_config(sd)
            expected = set(CLIP(cfg, init=False).state_dict())
            return cfg, {k: v for k, v in openai_convert.from_openai(sd).items() if k in expected}
        sd = {k: v for k, v in sd.items() if not k.endswith("attn_mask")}
    else:
        sd = _torch_load(path)
    sd = open_clip_convert.unwrap_training_checkpoint(sd)
    if not isinstance(sd, dict) or not openai_convert.is_openai_layout(sd):
        raise ClipscratchError(f"{path}: not a CLIP checkpoint in a layout clipscratch knows (OpenAI, open_clip, HF, clipscratch)")
    cfg = named_cfg or openai_convert.infer_config(sd)
    return cfg, open_clip_convert.from_open_clip(sd)


def newest_checkpoint(run_dir: str) -> Optional[str]:
    """The newest ``checkpoints/step_*`` folder of a training run's output folder, if any."""
    root = os.path.join(run_dir, "checkpoints")
    steps = sorted(d for d in os.listdir(root) if d.startswith("step_")) if os.path.isdir(root) else []
    return os.path.join(root, steps[-1]) if steps else None


def _read_directory(path: str, named_cfg: Optional[CLIPConfig]):
    if not os.path.exists(os.path.join(path, CONFIG_NAME)) and newest_checkpoint(path):
        path = newest_checkpoint(path)  # a training run's folder: its newest checkpoint
    config_path = os.path.join(path, CONFIG_NAME)
    if not os.path.exists(config_path):
        raise ClipscratchError(f"{path}: directory has no {CONFIG_NAME}; expected a clipscratch or Hugging Face checkpoint")
    if _is_clipscratch_config(config_path):
        return _read_clipscratch(path, os.path.join(path, WEIGHTS_NAME))
    hf_cfg = _read_json(config_path)
    if hf_cfg.get("model_type") != "clip":
        raise ClipscratchError(f"{config_path}: model_type {hf_cfg.get('model_type')!r} is not a CLIP model")
    for name in ("model.safetensors", "pytorch_model.bin"):
        weights = os.path.join(path, name)
        if os.path.exists(weights):
            sd = _safetensors(weights) if name.endswith(".safetensors") else _torch_load(weights)
            return named_cfg or hf_convert.config_from_hf(hf_cfg), hf_convert.from_hf(sd)
    raise ClipscratchError(f"{path}: no model.safetensors or pytorch_model.bin")


def _read_clipscratch(directory: str, weights: str):
    meta = _read_json(os.path.join(directory, CONFIG_NAME))
    try:
        cfg = config_from_dict(meta["model"])
    except (KeyError, TypeError, ValueError) as e:
        raise ClipscratchError(f"{directory}/{CONFIG_NAME}: bad model config: {e}") from None
    return cfg, _safetensors(weights)


def _is_clipscratch_config(path: str) -> bool:
    return _read_json(path).get("format") == "clipscratch"


def _read_json(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ClipscratchError(f"{path}: not valid JSON ({e})") from None


def _safetensors(path: str) -> Dict[str, torch.Tensor]:
    if not os.path.exists(path):
        raise ClipscratchError(f"{path}: file not found")
    try:
        return load_file(path)
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise ClipscratchError(f"{path}: not a readable safetensors file ({e})") from None


def _not_a_checkpoint(path: str) -> Optional[str]:
    """What a file is when its first bytes say it is no checkpoint (a zip archive, a pickle or
    safetensors can be); None when it may be one."""
    with open(path, "rb") as f:
        head = f.read(4096)
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80" or (len(head) > 8 and head[8:9] == b"{"):
        return None
    try:
        from PIL import Image

        with Image.open(path) as im:
            return f"an image ({im.format}, {im.size[0]}x{im.size[1]})"
    except (OSError, ValueError, SyntaxError):
        pass
    try:
        head.decode("utf-8")
        return "a text file"
    except UnicodeDecodeError:
        return f"not a checkpoint file (it starts with {head[:8]!r})"


def _torch_load(path: str):
    what = _not_a_checkpoint(path)
    if what:
        raise ClipscratchError(f"{path} is {what}, not a model checkpoint (clipscratch.load reads OpenAI, open_clip, "
                               f"Hugging Face and clipscratch checkpoints)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else "unsafe content"
        raise ClipscratchError(
            f"{path}: refusing to load: the pickle holds more than tensors and plain containers, "
            f"and loading it could run code ({first})"
        ) from None
    except (RuntimeError, EOFError, OSError) as e:
        raise ClipscratchError(f"{path}: cannot read checkpoint ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None


def load_state_dict_checked(model: CLIP, sd: Dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Strict load that names missing, unexpected and mis-shaped keys in one error."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    mismatched = [
        f"{k} (checkpoint {tuple(sd[k].shape)} vs model {tuple(expected[k].shape)})"
        for k in expected if k in sd and sd[k].shape != expected[k].shape
    ]
    problems = []
    if mismatched:
        problems.append("shape mismatch: " + ", ".join(mismatched[:8]) + (" ..." if len(mismatched) > 8 else ""))
    if missing:
        problems.append("missing keys: " + ", ".join(missing[:8]) + (" ..." if len(missing) > 8 else ""))
    if unexpected:
        problems.append("unexpected keys: " + ", ".join(unexpected[:8]) + (" ..." if len(unexpected) > 8 else ""))
    if problems:
        raise ClipscratchError(f"{source} does not fit the model: " + "; ".join(problems))
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in sd.items()}, strict=True)


def save_checkpoint(model: CLIP, directory: str, extra: Optional[dict] = None) -> str:
    """Write ``directory/model.safetensors`` and ``directory/config.json`` (atomically)."""
    os.makedirs(directory, exist_ok=True)
    sd = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    meta = {"format": "clipscratch", "model": config_to_dict(model.config), **(extra or {})}
    _atomic_write(os.path.join(directory, WEIGHTS_NAME), lambda p: save_file(sd, p))
    _atomic_write(os.path.join(directory, CONFIG_NAME), lambda p: _write_json(meta, p))
    return directory


def _write_json(obj, path):
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)


def _atomic_write(path: str, write: Callable[[str], None]) -> None:
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".tmp-")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def download_openai(name: str, cache_dir: str) -> str:
    """Fetch an OpenAI release into ``cache_dir``, checking its SHA256; one clear error offline."""
    url = OPENAI_URLS[name]
    sha = url.split("/")[-2]
    target = os.path.join(cache_dir, os.path.basename(url))
    if os.path.isfile(target) and _sha256(target) == sha:
        return target
    os.makedirs(cache_dir, exist_ok=True)
    tmp = target + ".part"
    try:
        from tqdm import tqdm

        with urllib.request.urlopen(url, timeout=30) as src, open(tmp, "wb") as dst:
            total = int(src.headers.get("Content-Length", 0))
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"downloading {name}") as bar:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
                    bar.update(len(chunk))
    except OSError as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise ClipscratchError(
            f"cannot download {name} ({e.__class__.__name__}: {getattr(e, 'reason', e)}); fetch {url} "
            f"on a machine with internet and pass its local path instead, e.g. clipscratch.load('/path/to/{os.path.basename(url)}')"
        ) from None
    if _sha256(tmp) != sha:
        os.remove(tmp)
        raise ClipscratchError(f"downloaded {name} does not match its SHA256 {sha}; try again")
    os.replace(tmp, target)
    return target


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def export(model: CLIP, path: str, layout: str) -> str:
    """Write ``model`` as ``hf`` (directory for transformers), ``open_clip`` or ``openai`` (state-dict .pt)."""
    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if layout == "hf":
        os.makedirs(path, exist_ok=True)
        _write_json(hf_convert.config_to_hf(model.config), os.path.join(path, CONFIG_NAME))
        save_file(hf_convert.to_hf(sd), os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    elif layout == "open_clip":
        torch.save({"state_dict": open_clip_convert.to_open_clip(sd)}, path)
    elif layout == "openai":
        torch.save(openai_convert.to_openai(sd), path)
    else:
        raise ClipscratchError(f"unknown export layout {layout!r}; use hf, open_clip or openai")
    return path
