"""Read the tensors of a TorchScript archive without running any of its code.

OpenAI released CLIP as ``torch.jit`` archives. ``torch.jit.load`` would compile
and run the archive's code; instead we unpickle ``data.pkl`` with an unpickler
that only knows how to rebuild tensors and records every other object as a plain
attribute dict. Anything else in the pickle (a callable, an unknown global) is
refused.
"""
from __future__ import annotations

import pickle
import zipfile
from typing import Dict

import torch

from ..errors import ClipscratchError

_STORAGE_DTYPES = {
    "HalfStorage": torch.float16, "FloatStorage": torch.float32, "DoubleStorage": torch.float64,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}


class _ScriptObject:
    """Stands in for a scripted module: keeps its attributes, runs nothing."""

    def __setstate__(self, state):
        self.attributes = state if isinstance(state, dict) else {}


def _rebuild_tensor(storage, offset, size, stride, *unused):
    return storage[1].as_strided(size, stride, offset) if storage[1].numel() else torch.empty(size, dtype=storage[0])


class _SafeUnpickler(pickle.Unpickler):
    def __init__(self, file, archive: zipfile.ZipFile, prefix: str):
        super().__init__(file)
        self._archive, self._prefix, self._storages = archive, prefix, {}

    def find_class(self, module, name):
        if module.startswith("__torch__"):
            return type(name, (_ScriptObject,), {})
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if (module, name) == ("collections", "OrderedDict"):
            return dict
        if module == "torch" and name in _STORAGE_DTYPES:
            return name
        raise ClipscratchError(f"TorchScript archive refers to {module}.{name}, which is not a tensor: refusing to load it")

    def persistent_load(self, pid):
        kind, storage_name, key, _location, _numel = pid
        if kind != "storage" or storage_name not in _STORAGE_DTYPES:
            raise ClipscratchError(f"unsupported storage record {pid!r} in TorchScript archive")
        dtype = _STORAGE_DTYPES[storage_name]
        if key not in self._storages:
            raw = bytearray(self._archive.read(f"{self._prefix}data/{key}"))
            flat = torch.frombuffer(raw, dtype=dtype) if raw else torch.empty(0, dtype=dtype)
            self._storages[key] = (dtype, flat.clone())
        return self._storages[key]


def is_torchscript_archive(path: str) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.endswith("constants.pkl") or "/code/" in n for n in z.namelist())


def read_torchscript_tensors(path: str) -> Dict[str, torch.Tensor]:
    """All tensors reachable from the archive's root module, by dotted attribute path."""
    with zipfile.ZipFile(path) as z:
        data = [n for n in z.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
        if not data:
            raise ClipscratchError(f"{path}: no data.pkl in this TorchScript archive")
        prefix = data[0][: -len("data.pkl")]
        with z.open(data[0]) as f:
            root = _SafeUnpickler(f, z, prefix).load()
    tensors: Dict[str, torch.Tensor] = {}

    def walk(obj, path: str):
        for name, value in getattr(obj, "attributes", {}).items():
            key = f"{path}{name}"
            if isinstance(value, torch.Tensor):
                tensors[key] = value
            elif isinstance(value, _ScriptObject):
                walk(value, key + ".")

    walk(root, "")
    return tensors
