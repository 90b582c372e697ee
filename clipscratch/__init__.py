"""clipscratch: CLIP written from scratch for training, evaluation and study."""
from .models import CLIP, CLIPConfig, create_model, get_config, list_models
from .tokenizer import get_tokenizer, tokenize
from .transforms import image_transform
from .loading import load, save_checkpoint

__version__ = "0.1.0"
__all__ = [
    "CLIP", "CLIPConfig", "create_model", "get_config", "list_models",
    "get_tokenizer", "tokenize", "image_transform", "load", "save_checkpoint",
]
