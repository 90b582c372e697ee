"""One optimisation step's gradients: the plain path, and gradient caching for big batches.

Gradient caching (GradCache; open_clip's ``accum_freq``) makes a step over K micro-batches
exactly the step over their union: (1) embed every micro-batch without gradients, (2) compute
the contrastive loss over all features and take its gradient with respect to the features and
the temperature (and bias), (3) re-embed each micro-batch with gradients and back-propagate
those feature gradients. Model randomness (patch dropout) is replayed on every device the
model runs on, so both passes see the same tokens.
"""
from __future__ import annotations

import contextlib
from typing import List, Tuple

import torch

Batch = Tuple[torch.Tensor, torch.Tensor]


def plain_step(model, batch: Batch, loss_fn, backward) -> torch.Tensor:
    images, tokens = batch
    loss = loss_fn(*model(images, tokens))
    backward(loss)
    return loss.detach()


def _rng_state(device: torch.device):
    """The CPU generator's state and, on a GPU, that device's: patch dropout draws from the latter."""
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def _set_rng_state(state, device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def grad_cache_step(model, micro_batches: List[Batch], loss_fn, backward, no_sync=None) -> torch.Tensor:
    device = micro_batches[0][0].device
    rng_states, image_parts, text_parts = [], [], []
    with torch.no_grad():
        for images, tokens in micro_batches:
            rng_states.append(_rng_state(device))
            out = model(images, tokens)
            image_parts.append(out.image_features)
            text_parts.append(out.text_features)
    end_state = _rng_state(device)

    all_images = torch.cat(image_parts).float().requires_grad_(True)
    all_texts = torch.cat(text_parts).float().requires_grad_(True)
    scale_leaf = out.scale.detach().requires_grad_(True)
    bias_leaf = None if out.bias is None else out.bias.detach().requires_grad_(True)
    loss = loss_fn(all_images, all_texts, scale_leaf, bias_leaf)
    leaves = [all_images, all_texts, scale_leaf] + ([bias_leaf] if bias_leaf is not None else [])
    grads = torch.autograd.grad(loss, leaves)
    image_grads = grads[0].split([p.shape[0] for p in image_parts])
    text_grads = grads[1].split([p.shape[0] for p in text_parts])

    last = len(micro_batches) - 1
    for k, (images, tokens) in enumerate(micro_batches):
        _set_rng_state(rng_states[k], device)
        sync = contextlib.nullcontext() if (k == last or no_sync is None) else no_sync(model)
        with sync:
            out = model(images, tokens)
            surrogate = (out.image_features.float() * image_grads[k]).sum() + (out.text_features.float() * text_grads[k]).sum()
            if k == last:  # the temperature's (and bias') gradient enters once, through the model's own forward
                surrogate = surrogate + out.scale * grads[2]
                if bias_leaf is not None:
                    surrogate = surrogate + out.bias * grads[3]
            backward(surrogate)
    _set_rng_state(end_state, device)
    return loss.detach()


def optimizer_step(model, micro_batches: List[Batch], loss_fn, accelerator, optimizer, scheduler, grad_clip: float) -> torch.Tensor:
    """Gradients of one step (plain, or gradient caching over several micro-batches), clipping,
    the update and the schedule; returns the loss, a 0-dim tensor on the model's device: reading
    it waits for the GPU to finish the step, so the loop reads it only on the steps it logs."""
    if len(micro_batches) == 1:
        loss = plain_step(model, micro_batches[0], loss_fn, accelerator.backward)
    else:
        no_sync = accelerator.no_sync if accelerator.num_processes > 1 else None
        loss = grad_cache_step(model, micro_batches, loss_fn, accelerator.backward, no_sync)
    if grad_clip > 0:
        accelerator.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return loss
