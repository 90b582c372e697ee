"""One optimisation step's gradients: the plain path, and gradient caching for big batches.

Gradient caching (GradCache; open_clip's ``accum_freq``) makes a step over K
micro-batches exactly the step over their union: (1) embed every micro-batch
without gradients, (2) compute the contrastive loss over all features and take
its gradient with respect to the features and the temperature, (3) re-embed each
micro-batch with gradients and back-propagate those feature gradients. Model
randomness (patch dropout) is replayed so both passes see the same tokens.
"""
from __future__ import annotations

import contextlib
from typing import List, Tuple

import torch

Batch = Tuple[torch.Tensor, torch.Tensor]


def _temperature(model) -> Tuple[torch.Tensor, torch.Tensor]:
    core = getattr(model, "module", model)
    core = getattr(core, "_orig_mod", core)
    return core.scale(), getattr(core, "logit_bias", None)


def plain_step(model, batch: Batch, loss_fn, backward) -> float:
    images, tokens = batch
    image_features, text_features, scale = model(images, tokens)
    _, bias = _temperature(model)
    loss = loss_fn(image_features, text_features, scale, bias)
    backward(loss)
    return loss.item()


def grad_cache_step(model, micro_batches: List[Batch], loss_fn, backward, no_sync=None) -> float:
    rng_states, image_parts, text_parts = [], [], []
    with torch.no_grad():
        for images, tokens in micro_batches:
            rng_states.append(torch.get_rng_state())
            i, t, _ = model(images, tokens)
            image_parts.append(i)
            text_parts.append(t)
    end_state = torch.get_rng_state()

    all_images = torch.cat(image_parts).float().requires_grad_(True)
    all_texts = torch.cat(text_parts).float().requires_grad_(True)
    scale, bias = _temperature(model)
    scale_leaf = scale.detach().requires_grad_(True)
    bias_leaf = None if bias is None else bias.detach().requires_grad_(True)
    loss = loss_fn(all_images, all_texts, scale_leaf, bias_leaf)
    leaves = [all_images, all_texts, scale_leaf] + ([bias_leaf] if bias_leaf is not None else [])
    grads = torch.autograd.grad(loss, leaves)
    image_grads = grads[0].split([p.shape[0] for p in image_parts])
    text_grads = grads[1].split([p.shape[0] for p in text_parts])

    last = len(micro_batches) - 1
    for k, (images, tokens) in enumerate(micro_batches):
        torch.set_rng_state(rng_states[k])
        sync = contextlib.nullcontext() if (k == last or no_sync is None) else no_sync(model)
        with sync:
            i, t, scale_k = model(images, tokens)
            surrogate = (i.float() * image_grads[k]).sum() + (t.float() * text_grads[k]).sum()
            if k == last:  # the temperature's gradient enters once, through the model's own forward
                surrogate = surrogate + scale_k * grads[2]
                if bias_leaf is not None:
                    surrogate = surrogate + bias * grads[3]
            backward(surrogate)
    torch.set_rng_state(end_state)
    return loss.item()
