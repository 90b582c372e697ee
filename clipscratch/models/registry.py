"""Named model configs.

OpenAI's names (``ViT-B/32``, ``RN50``, ``ViT-L/14@336px``) give the architecture
those weights were trained with (QuickGELU). open_clip's names are accepted too:
``ViT-B-32`` uses exact GELU as in open_clip, ``ViT-B-32-quickgelu`` QuickGELU.
The ResNet names mean OpenAI's QuickGELU models here (the activation only
touches their text tower); pass ``activation="gelu"`` for open_clip's variant.
"""
from __future__ import annotations

from typing import Dict, List

from .config import CLIPConfig, TextConfig, VisionConfig

OPENAI_URLS = {
    "RN50": "https://openaipublic.azureedge.net/clip/models/afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762/RN50.pt",
    "RN101": "https://openaipublic.azureedge.net/clip/models/8fa8567bab74a42d41c5915025a8e4538c3bdbe8804a470a72f30b0d94fab599/RN101.pt",
    "RN50x4": "https://openaipublic.azureedge.net/clip/models/7e526bd135e493cef0776de27d5f42653e6b4c8bf9e0f653bb11773263205fdd/RN50x4.pt",
    "RN50x16": "https://openaipublic.azureedge.net/clip/models/52378b407f34354e150460fe41077663dd5b39c54cd0bfd2b27167a4a06ec9aa/RN50x16.pt",
    "RN50x64": "https://openaipublic.azureedge.net/clip/models/be1cfb55d75a9666199fb2206c106743da0f6468c9d327f3e0d0a543a9919d9c/RN50x64.pt",
    "ViT-B/32": "https://openaipublic.azureedge.net/clip/models/40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af/ViT-B-32.pt",
    "ViT-B/16": "https://openaipublic.azureedge.net/clip/models/5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f/ViT-B-16.pt",
    "ViT-L/14": "https://openaipublic.azureedge.net/clip/models/b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836/ViT-L-14.pt",
    "ViT-L/14@336px": "https://openaipublic.azureedge.net/clip/models/3035c92b350959924f9f00213499208652fc7ea050643e8b385c2dac08641f02/ViT-L-14-336px.pt",
}


def _text(width: int, heads: int, layers: int = 12) -> TextConfig:
    return TextConfig(context_length=77, vocab_size=49408, width=width, heads=heads, layers=layers)


def _vit(embed, image, layers, width, patch, text, activation="quick_gelu") -> CLIPConfig:
    vision = VisionConfig(image_size=image, layers=layers, width=width, patch_size=patch)
    return CLIPConfig(embed_dim=embed, vision=vision, text=text, activation=activation)


def _rn(embed, image, layers, width, text) -> CLIPConfig:
    vision = VisionConfig(image_size=image, layers=tuple(layers), width=width)
    return CLIPConfig(embed_dim=embed, vision=vision, text=text)


# The nine released OpenAI models (QuickGELU).
_OPENAI: Dict[str, CLIPConfig] = {
    "RN50": _rn(1024, 224, (3, 4, 6, 3), 64, _text(512, 8)),
    "RN101": _rn(512, 224, (3, 4, 23, 3), 64, _text(512, 8)),
    "RN50x4": _rn(640, 288, (4, 6, 10, 6), 80, _text(640, 10)),
    "RN50x16": _rn(768, 384, (6, 8, 18, 8), 96, _text(768, 12)),
    "RN50x64": _rn(1024, 448, (3, 15, 36, 10), 128, _text(1024, 16)),
    "ViT-B/32": _vit(512, 224, 12, 768, 32, _text(512, 8)),
    "ViT-B/16": _vit(512, 224, 12, 768, 16, _text(512, 8)),
    "ViT-L/14": _vit(768, 224, 24, 1024, 14, _text(768, 12)),
    "ViT-L/14@336px": _vit(768, 336, 24, 1024, 14, _text(768, 12)),
}

# Small models for tests and CPU runs.
_TINY: Dict[str, CLIPConfig] = {
    "tiny-vit": CLIPConfig(
        embed_dim=64,
        vision=VisionConfig(image_size=32, layers=2, width=64, patch_size=8, heads=2),
        text=TextConfig(context_length=77, vocab_size=49408, width=64, heads=2, layers=2),
    ),
    "tiny-rn": CLIPConfig(
        embed_dim=64,
        vision=VisionConfig(image_size=64, layers=(1, 1, 1, 1), width=16, heads=4),
        text=TextConfig(context_length=77, vocab_size=49408, width=64, heads=2, layers=2),
    ),
    # The embedded default training run (train.py with no arguments): 8.6M parameters (6.3M in
    # the token embedding). A larger positional-embedding init than OpenAI's lets position be
    # learned within minutes.
    "small-vit": CLIPConfig(
        embed_dim=128,
        vision=VisionConfig(image_size=48, layers=4, width=128, patch_size=8, heads=4, pos_embed_std=0.5),
        text=TextConfig(context_length=32, vocab_size=49408, width=128, heads=4, layers=3),
    ),
}


def _open_clip_aliases() -> Dict[str, CLIPConfig]:
    import dataclasses

    aliases = {}
    for name, cfg in _OPENAI.items():
        oc = name.replace("/", "-").replace("@336px", "-336")
        gelu = dataclasses.replace(cfg, activation="gelu")
        aliases[oc + "-quickgelu"] = cfg
        if oc != name:  # ResNet names coincide with OpenAI's and keep QuickGELU
            aliases[oc] = gelu
    return aliases


_REGISTRY: Dict[str, CLIPConfig] = {**_OPENAI, **_open_clip_aliases(), **_TINY}


def list_models() -> List[str]:
    """All registered model names."""
    return sorted(_REGISTRY)


def openai_model_names() -> List[str]:
    return list(_OPENAI)


def get_config(name: str) -> CLIPConfig:
    import copy

    if name not in _REGISTRY:
        raise KeyError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    return copy.deepcopy(_REGISTRY[name])
