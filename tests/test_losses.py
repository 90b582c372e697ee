"""The distributed loss equals the single-process loss; gradient caching equals the big batch."""
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

import clipscratch
from clipscratch.loss import ClipLoss, SigLipLoss
from clipscratch.train.step import grad_cache_step, plain_step


def _reference_clip_loss(img, txt, scale):
    logits = scale * img @ txt.T
    labels = torch.arange(len(img))
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def _batch(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, 32, 32, generator=g)
    tokens = clipscratch.tokenize([f"caption number {i} with {'many ' * (i % 3)}words" for i in range(n)])
    return images, tokens


def test_clip_loss_matches_hand_written_formula():
    img, txt = F.normalize(torch.randn(6, 16), dim=-1), F.normalize(torch.randn(6, 16), dim=-1)
    scale = torch.tensor(14.3)
    assert torch.allclose(ClipLoss()(img, txt, scale), _reference_clip_loss(img, txt, scale))


def test_siglip_loss_matches_hand_written_formula():
    img, txt = F.normalize(torch.randn(5, 16), dim=-1), F.normalize(torch.randn(5, 16), dim=-1)
    scale, bias = torch.tensor(10.0), torch.tensor(-10.0)
    z = 2 * torch.eye(5) - 1
    expected = -F.logsigmoid(z * (scale * img @ txt.T + bias)).sum() / 5
    assert torch.allclose(SigLipLoss()(img, txt, scale, bias), expected)


def _worker(rank, world, port, loss_name, out_dir, sizes):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = clipscratch.create_model("tiny-vit", **({"init_logit_bias": -10.0} if loss_name == "siglip" else {}))
    images, tokens = _batch(sum(sizes))
    local = slice(sum(sizes[:rank]), sum(sizes[: rank + 1]))
    loss_fn = ClipLoss() if loss_name == "clip" else SigLipLoss()
    loss = plain_step(model, (images[local], tokens[local]), loss_fn, lambda l: l.backward()).item()
    grads = torch.cat([p.grad.flatten() for p in model.parameters()])
    dist.all_reduce(grads)  # DDP averages gradients over ranks
    loss_t = torch.tensor(loss)
    dist.all_reduce(loss_t)
    if rank == 0:
        torch.save({"grads": grads / world, "loss": loss_t / world}, os.path.join(out_dir, "dist.pt"))
    dist.destroy_process_group()


@pytest.mark.parametrize("loss_name,sizes", [("clip", (4, 4)), ("siglip", (4, 4)), ("clip", (5, 3)), ("siglip", (6, 2))])
def test_two_process_loss_and_gradients_equal_single_process(loss_name, sizes, tmp_path):
    """Equal batches, and unequal ones (gpu_decode drops an image that fails to decode from one
    rank's batch only): the ranks' mean loss and averaged gradients are the single process's
    on all samples together."""
    port = 29500 + (os.getpid() % 1000) + 7 * sizes[0] + (0 if loss_name == "clip" else 3)
    mp.start_processes(_worker, args=(2, port, loss_name, str(tmp_path), sizes), nprocs=2, join=True, start_method="spawn")
    torch.manual_seed(0)
    model = clipscratch.create_model("tiny-vit", **({"init_logit_bias": -10.0} if loss_name == "siglip" else {}))
    loss_fn = ClipLoss() if loss_name == "clip" else SigLipLoss()
    loss = plain_step(model, _batch(sum(sizes)), loss_fn, lambda l: l.backward()).item()
    grads = torch.cat([p.grad.flatten() for p in model.parameters()])
    got = torch.load(tmp_path / "dist.pt")
    assert abs(got["loss"].item() - loss) < 1e-5
    assert torch.allclose(got["grads"], grads, rtol=1e-4, atol=1e-6)
    assert grads.abs().sum() > 0


def test_gradient_caching_equals_the_big_batch():
    torch.manual_seed(0)
    big = clipscratch.create_model("tiny-vit")
    cached = clipscratch.create_model("tiny-vit")
    cached.load_state_dict(big.state_dict())
    images, tokens = _batch(12, seed=3)
    loss_big = plain_step(big, (images, tokens), ClipLoss(), lambda l: l.backward()).item()
    micro = [(images[i : i + 4], tokens[i : i + 4]) for i in range(0, 12, 4)]
    loss_cached = grad_cache_step(cached, micro, ClipLoss(), lambda l: l.backward()).item()
    assert abs(loss_big - loss_cached) < 1e-5
    for (name, a), b in zip(big.named_parameters(), cached.parameters()):
        assert torch.allclose(a.grad, b.grad, rtol=1e-4, atol=1e-7), name


def test_gradient_caching_replays_model_randomness():
    """With patch dropout the second (grad) pass must drop the same patches as the first."""
    torch.manual_seed(0)
    model = clipscratch.create_model("tiny-vit", vision={"patch_dropout": 0.5}).train()
    images, tokens = _batch(8, seed=4)
    micro = [(images[:4], tokens[:4]), (images[4:], tokens[4:])]
    torch.manual_seed(5)
    loss = grad_cache_step(model, micro, ClipLoss(), lambda l: l.backward()).item()
    grads = [p.grad.clone() for p in model.parameters()]
    # reference: the same dropped patches, obtained by replaying the same RNG stream, one big backward
    model.zero_grad()
    torch.manual_seed(5)
    feats = []
    for i, t in micro:
        fi, ft, scale, _ = model(i, t)
        feats.append((fi, ft))
    ref = ClipLoss()(torch.cat([f[0] for f in feats]), torch.cat([f[1] for f in feats]), scale)
    ref.backward()
    assert abs(ref.item() - loss) < 1e-5
    for a, p in zip(grads, model.parameters()):
        assert torch.allclose(a, p.grad, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("micro_batches", [1, 2])
def test_a_step_hands_back_the_loss_without_reading_it(micro_batches):
    """The training loop reads the loss only on the steps it logs: a step returns it as a
    detached 0-dim tensor on the model's device (a float would wait for the GPU every step)."""
    torch.manual_seed(0)
    model = clipscratch.create_model("tiny-vit")
    images, tokens = _batch(8, seed=6)
    with torch.no_grad():
        expected = ClipLoss()(*model(images, tokens)).item()
    if micro_batches == 1:
        loss = plain_step(model, (images, tokens), ClipLoss(), lambda l: l.backward())
    else:
        loss = grad_cache_step(model, [(images[:4], tokens[:4]), (images[4:], tokens[4:])], ClipLoss(), lambda l: l.backward())
    assert isinstance(loss, torch.Tensor) and loss.dim() == 0 and not loss.requires_grad
    assert loss.device == next(model.parameters()).device
    assert abs(loss.item() - expected) < 1e-5
