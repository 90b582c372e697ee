from .clip import CLIP
from .config import CLIPConfig, TextConfig, VisionConfig, config_from_dict, config_to_dict
from .factory import create_model
from .registry import get_config, list_models

__all__ = ["CLIP", "CLIPConfig", "TextConfig", "VisionConfig", "config_from_dict", "config_to_dict",
           "create_model", "get_config", "list_models"]
