"""OpenAI's ModifiedResNet image tower (RN50, RN101, RN50x4, RN50x16, RN50x64).

Differences from torchvision's ResNet: a 3-conv stem with an average pool instead
of a max pool, anti-aliased strided convolutions (avg-pool before the strided
path), and an attention-pooling head instead of global average pooling.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from .config import VisionConfig


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.avgpool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu3 = nn.ReLU(inplace=True)
        self.downsample = None
        if stride > 1 or inplanes != planes * self.expansion:
            # keys "-1" (pool), "0" (conv), "1" (bn) as in OpenAI's checkpoints
            self.downsample = nn.Sequential(OrderedDict([
                ("-1", nn.AvgPool2d(stride)),
                ("0", nn.Conv2d(inplanes, planes * self.expansion, 1, stride=1, bias=False)),
                ("1", nn.BatchNorm2d(planes * self.expansion)),
            ]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.avgpool(out)  # stride happens here, after the 3x3 conv
        out = self.bn3(self.conv3(out))
        return self.relu3(out + identity)


class AttentionPool2d(nn.Module):
    """Attention pooling: the mean feature queries all positions (one query token)."""

    def __init__(self, spatial_dim: int, embed_dim: int, heads: int, output_dim: int):
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.randn(spatial_dim ** 2 + 1, embed_dim) / embed_dim ** 0.5)
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.c_proj = nn.Linear(embed_dim, output_dim)
        self.heads = heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C = x.shape[:2]
        x = x.flatten(2).transpose(1, 2)  # [B, HW, C]
        x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1)  # [B, 1 + HW, C]
        x = x + self.positional_embedding.to(x.dtype)
        H, D = self.heads, C // self.heads
        q = self.q_proj(x[:, :1]).view(B, 1, H, D).transpose(1, 2)  # [B, H, 1, D]
        k = self.k_proj(x).view(B, -1, H, D).transpose(1, 2)  # [B, H, 1 + HW, D]
        v = self.v_proj(x).view(B, -1, H, D).transpose(1, 2)  # [B, H, 1 + HW, D]
        y = F.scaled_dot_product_attention(q, k, v)  # [B, H, 1, D]
        return self.c_proj(y.transpose(1, 2).reshape(B, C))  # [B, output_dim]


class ModifiedResNet(nn.Module):
    def __init__(self, cfg: VisionConfig, embed_dim: int):
        super().__init__()
        width = cfg.width
        self.image_size = cfg.image_size
        # stem: three 3x3 convs, then a 2x2 average pool
        self.conv1 = nn.Conv2d(3, width // 2, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width // 2)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(width // 2, width // 2, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width // 2)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(width // 2, width, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.relu3 = nn.ReLU(inplace=True)
        self.avgpool = nn.AvgPool2d(2)

        self._inplanes = width
        self.layer1 = self._make_layer(width, cfg.layers[0])
        self.layer2 = self._make_layer(width * 2, cfg.layers[1], stride=2)
        self.layer3 = self._make_layer(width * 4, cfg.layers[2], stride=2)
        self.layer4 = self._make_layer(width * 8, cfg.layers[3], stride=2)
        self.attnpool = AttentionPool2d(cfg.image_size // 32, width * 32, cfg.num_heads, embed_dim)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        layers = [Bottleneck(self._inplanes, planes, stride)]
        self._inplanes = planes * Bottleneck.expansion
        layers += [Bottleneck(self._inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def init_weights(self) -> None:
        std = self.attnpool.c_proj.in_features ** -0.5
        for proj in (self.attnpool.q_proj, self.attnpool.k_proj, self.attnpool.v_proj, self.attnpool.c_proj):
            nn.init.normal_(proj.weight, std=std)
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in stage:
                nn.init.zeros_(block.bn3.weight)  # each residual branch starts as identity

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.bn1(self.conv1(x)))  # [B, w/2, H/2, W/2]
        x = self.relu2(self.bn2(self.conv2(x)))
        x = self.relu3(self.bn3(self.conv3(x)))  # [B, w, H/2, W/2]
        return self.avgpool(x)  # [B, w, H/4, W/4]

    def output_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """The last stage's grid as tokens [B, H/32 * W/32, 32w], before attention pooling."""
        x = self.stem(images.to(self.conv1.weight.dtype))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # [B, 32w, H/32, W/32]
        return x.flatten(2).transpose(1, 2)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.stem(images.to(self.conv1.weight.dtype))
        x = self.layer1(x)  # [B, 4w, H/4, W/4]
        x = self.layer2(x)  # [B, 8w, H/8, W/8]
        x = self.layer3(x)  # [B, 16w, H/16, W/16]
        x = self.layer4(x)  # [B, 32w, H/32, W/32]
        return self.attnpool(x)  # [B, embed_dim]
