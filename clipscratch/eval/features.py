"""Feature extraction with an on-disk cache keyed by model weights, data and transform,
so that a sweep (templates, shots, seeds, alpha/beta) never recomputes image features."""
from __future__ import annotations

import hashlib
import os
from typing import Callable, List, Optional, Sequence

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from ..tokenizer import get_tokenizer
from .datasets import EvalData
from .metrics import class_prompts, template_ensemble


def model_fingerprint(model: torch.nn.Module) -> str:
    """sha1 over every tensor of the state dict: a finetuned model never hits a stale cache."""
    h = hashlib.sha1()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


class _Transformed(torch.utils.data.Dataset):
    def __init__(self, images: Sequence, transform: Callable):
        self.images, self.transform = images, transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.transform(self.images[i])


class FeatureExtractor:
    def __init__(self, model, preprocess: Callable, device="cpu", batch_size: int = 128, workers: int = 0,
                 cache_dir: Optional[str] = None, progress: bool = True):
        self.model, self.preprocess, self.device = model.eval(), preprocess, device
        self.batch_size, self.workers, self.cache_dir, self.progress = batch_size, workers, cache_dir, progress
        self.tokenizer = get_tokenizer(model.context_length)
        self._fingerprint: Optional[str] = None

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = model_fingerprint(self.model)
        return self._fingerprint

    def _cache_path(self, data: EvalData) -> Optional[str]:
        if not self.cache_dir:
            return None
        members = hashlib.sha1("\n".join(data.locators()).encode()).hexdigest()  # which images, in which order
        key = hashlib.sha1(f"{self.fingerprint}|{data.name}|{members}|{self.preprocess!r}".encode()).hexdigest()[:20]
        return os.path.join(self.cache_dir, f"image-{key}.safetensors")

    @torch.no_grad()
    def image_features(self, data: EvalData) -> torch.Tensor:
        """Un-normalised image features [N, E] (float32, CPU), cached on disk when cache_dir is set."""
        path = self._cache_path(data)
        if path and os.path.exists(path):
            return load_file(path)["features"]
        loader = torch.utils.data.DataLoader(_Transformed(data.images, self.preprocess), batch_size=self.batch_size,
                                             num_workers=self.workers)
        feats: List[torch.Tensor] = []
        for images in tqdm(loader, desc=f"image features ({data.name[:40]})", disable=not self.progress, leave=False):
            feats.append(self.model.encode_image(images.to(self.device)).float().cpu())
        out = torch.cat(feats) if feats else torch.empty(0, self.model.config.embed_dim)
        if path:
            os.makedirs(self.cache_dir, exist_ok=True)
            save_file({"features": out.contiguous()}, path)
        return out

    @torch.no_grad()
    def text_features(self, texts: Sequence[str]) -> torch.Tensor:
        feats = []
        for i in range(0, len(texts), self.batch_size):
            tokens = self.tokenizer(list(texts[i : i + self.batch_size])).to(self.device)
            feats.append(self.model.encode_text(tokens).float().cpu())
        return torch.cat(feats) if feats else torch.empty(0, self.model.config.embed_dim)

    def classifier(self, classnames: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
        """Zero-shot class embeddings [C, E]: mean of normalised template embeddings, renormalised."""
        return template_ensemble(self.text_features(class_prompts(classnames, templates)), len(classnames))
