"""Data made before training by a generator named in the config (``data.generate.kind``).

A generator writes the shards that ``data.train`` and ``data.val`` name, once: it does nothing
when they and their ``*_info.json`` are there. Registered generators:

    shapes   coloured-shape images with captions (demos/shapes.py): the embedded default run
"""
from __future__ import annotations

import importlib

from ..errors import ClipscratchError

GENERATORS = {"shapes": "clipscratch.demos.shapes:write_shapes_shards"}


def _generator(kind: str):
    module, name = GENERATORS[kind].split(":")
    return getattr(importlib.import_module(module), name)


def check_generate(data) -> None:
    gen = data.generate
    if not gen.kind:
        return
    if gen.kind not in GENERATORS:
        raise ClipscratchError(f"config key 'data.generate.kind' must be one of {', '.join(GENERATORS)} (or empty), got {gen.kind!r}")
    if gen.train_samples < 1:
        raise ClipscratchError(f"config key 'data.generate.train_samples' must be >= 1, got {gen.train_samples}")
    if gen.val_samples < 0 or (gen.val_samples > 0) != bool(data.val):
        raise ClipscratchError("config keys 'data.generate.val_samples' and 'data.val' go together: "
                               "set both (validation shards to generate) or neither")


def generate_data(data, seed: int) -> None:
    """Write the configured generated data if it is not there yet (call on the main process)."""
    if data.generate.kind:
        _generator(data.generate.kind)(data, seed)
