"""Naming parts of a CLIP by parameter: one pattern language for ``freeze=`` in training and
``--parts`` in few-shot finetuning and text alignment.

A pattern is a named part or an fnmatch pattern over parameter names
(``visual.transformer.resblocks.11.*``, ``text.ln_final.*``):

    text              the text tower               text.*
    image             the image tower              visual.*
    text_projection   the text projection          text.text_projection
    image_projection  the image projection         visual.proj (ViT) or visual.attnpool.c_proj.* (ResNet)
    temperature       logit scale (and bias)       logit_scale, logit_bias
"""
from __future__ import annotations

import fnmatch
from typing import Dict, List, Sequence

from torch import nn

from ..errors import ClipscratchError

PARTS: Dict[str, List[str]] = {
    "text": ["text.*"],
    "image": ["visual.*"],
    "text_projection": ["text.text_projection"],
    "image_projection": ["visual.proj", "visual.attnpool.c_proj.*"],
    "temperature": ["logit_scale", "logit_bias"],
}


def parameter_names(model: nn.Module, patterns: Sequence[str]) -> List[str]:
    """Names of the parameters that any of ``patterns`` selects, in the model's order; a
    pattern that selects nothing is an error naming the valid forms."""
    names = [n for n, _ in model.named_parameters()]
    chosen = set()
    for pattern in patterns:
        globs = PARTS.get(pattern, [pattern])
        matched = {n for n in names if any(fnmatch.fnmatchcase(n, g) for g in globs)}
        if not matched:
            raise ClipscratchError(f"part {pattern!r} matches no parameter; use {', '.join(PARTS)} or a name pattern "
                                   f"such as 'visual.transformer.resblocks.0.*' (names look like {names[0]!r})")
        chosen |= matched
    return [n for n in names if n in chosen]
