"""Grad-CAM (pytorch-grad-cam) for CLIP: where does the image tower look for a prompt?

The target is the similarity between the image and a chosen prompt (or class), so
any prompt, a wrong one included, can be explained. ViT towers use the last block's
``ln_1`` with a reshape of the patch tokens to a grid; ResNets use ``layer4``.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ClipscratchError
from .args import non_negative_int, positive_int


class PromptSimilarity(nn.Module):
    """images [B, 3, H, W] -> 100 * cos(image, prompt_j) for each prompt [B, P]."""

    def __init__(self, model, prompt_embeddings: torch.Tensor):
        super().__init__()
        self.model = model
        self.register_buffer("prompts", F.normalize(prompt_embeddings.float(), dim=-1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return 100.0 * F.normalize(self.model.encode_image(images).float(), dim=-1) @ self.prompts.T


def target_layer_and_reshape(model):
    visual = model.visual
    if hasattr(visual, "transformer"):
        grid = visual.grid_size

        def reshape(tokens: torch.Tensor) -> torch.Tensor:  # [B, 1 + g*g, C] -> [B, C, g, g]
            patches = tokens[:, 1:, :]
            return patches.reshape(tokens.shape[0], grid, grid, tokens.shape[-1]).permute(0, 3, 1, 2)

        return visual.transformer.resblocks[-1].ln_1, reshape
    return visual.layer4[-1], None


def compute_cams(model, images: torch.Tensor, prompt_embeddings: torch.Tensor, targets: Sequence[int]) -> np.ndarray:
    """Grad-CAM maps [B, H, W] in [0, 1] for image i against prompt targets[i]."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    wrapper = PromptSimilarity(model, prompt_embeddings).eval()
    layer, reshape = target_layer_and_reshape(model)
    if getattr(model.visual, "patch_dropout", 0) and model.training:
        raise ClipscratchError("put the model in eval mode for Grad-CAM")
    images = images.detach().clone().requires_grad_(True)  # gradients reach the layer even when no image weight trains
    with GradCAM(model=wrapper, target_layers=[layer], reshape_transform=reshape) as cam:
        return cam(input_tensor=images, targets=[ClassifierOutputTarget(int(t)) for t in targets])


def explain(model, images: torch.Tensor, prompt_embeddings: torch.Tensor) -> np.ndarray:
    """Maps [P, B, H, W]: every image explained against every prompt."""
    n = images.shape[0]
    return np.stack([compute_cams(model, images, prompt_embeddings, [j] * n) for j in range(prompt_embeddings.shape[0])])


def pointing_game(cams: np.ndarray, boxes: List[List[Sequence[int]]], original_size: int) -> dict:
    """Share of maps whose peak lies inside one of the object's boxes, and the chance rate (box area share)."""
    hits, chance = [], []
    for cam, img_boxes in zip(cams, boxes):
        scale = original_size / cam.shape[0]
        y, x = np.unravel_index(int(cam.argmax()), cam.shape)
        px, py = (x + 0.5) * scale, (y + 0.5) * scale
        hits.append(any(b[0] <= px <= b[2] and b[1] <= py <= b[3] for b in img_boxes))
        mask = np.zeros((original_size, original_size), bool)
        for b in img_boxes:
            mask[max(0, b[1]) : b[3] + 1, max(0, b[0]) : b[2] + 1] = True
        chance.append(mask.mean())
    return {"pointing_accuracy": float(np.mean(hits)), "chance": float(np.mean(chance)), "n": len(hits)}


def overlay_grid(images: List, cams_by_column: List[np.ndarray], titles: List[str], path: str, size: int = 160,
                 row_titles: Optional[List[str]] = None) -> str:
    """PNG grid: rows = images, columns = the original + one overlay per entry of ``cams_by_column``
    (a prompt, or a model of a sweep)."""
    from pytorch_grad_cam.utils.image import show_cam_on_image

    from .report import figure, save_figure

    rows, cols = len(images), len(titles) + 1
    fig, axes = figure((2.0 * cols, 2.0 * rows), nrows=rows, ncols=cols, squeeze=False)
    for r, image in enumerate(images):
        rgb = np.asarray(image.convert("RGB").resize((size, size))).astype(np.float32) / 255
        axes[r][0].imshow(rgb)
        axes[r][0].set_title(row_titles[r][:30] if row_titles else "image", fontsize=7)
        for c, title in enumerate(titles):
            cam = cams_by_column[c][r]
            cam = np.asarray(torch.nn.functional.interpolate(torch.tensor(cam)[None, None], size=(size, size), mode="bilinear")[0, 0])
            axes[r][c + 1].imshow(show_cam_on_image(rgb, cam, use_rgb=True))
            axes[r][c + 1].set_title(title[:28], fontsize=7)
    for ax in axes.flat:
        ax.axis("off")
    return save_figure(fig, path)


def add_arguments(p) -> None:
    p.add_argument("--prompts", nargs="+", help="prompts to explain (default: the dataset's class prompts); "
                   "the maps are saved as gradcam_maps.npz [prompts, images, H, W]")
    p.add_argument("--images", type=positive_int, default=6, help="images in the overlay grid")
    p.add_argument("--pointing", type=non_negative_int, default=200, help="shapes datasets: images for the pointing game (0 to skip)")


def run(suite, args) -> dict:
    data = suite.test()
    model, ex = suite.model, suite.extractor
    template = data.templates[0]
    if not args.prompts and not data.classnames:
        raise ClipscratchError(f"{data.name} has no class names: name the prompts to explain with --prompts")
    prompts = args.prompts or [template.format(c) for c in data.classnames]
    prompt_emb = ex.text_features(prompts).to(suite.device)
    n = min(args.images, len(data))
    batch = torch.stack([suite.preprocess(data.images[i]) for i in range(n)]).to(suite.device)
    cams = explain(model, batch, prompt_emb)  # [P, n, H, W]
    grid = overlay_grid([data.images[i] for i in range(n)], cams, prompts, suite.path("gradcam_grid.png"))
    maps = suite.path("gradcam_maps.npz")
    np.savez_compressed(maps, maps=cams, prompts=np.array(prompts))
    results = {"dataset": data.name, "prompts": prompts, "grid": grid, "maps": maps}
    if args.pointing and "boxes" in data.extra and data.labels is not None:
        m = min(args.pointing, len(data))
        class_emb = ex.text_features([template.format(c) for c in data.classnames]).to(suite.device)
        maps = []
        for start in range(0, m, 64):
            idx = range(start, min(m, start + 64))
            imgs = torch.stack([suite.preprocess(data.images[i]) for i in idx]).to(suite.device)
            maps.append(compute_cams(model, imgs, class_emb, data.labels[list(idx)].tolist()))
        results["pointing_game"] = pointing_game(np.concatenate(maps), data.extra["boxes"][:m], data.images[0].size[0])
        pg = results["pointing_game"]
        print(f"  pointing game: peak inside the object {pg['pointing_accuracy']:.3f} of {pg['n']} (chance {pg['chance']:.3f})")
    print(f"  overlays: {grid}")
    return suite.save("gradcam", results)
