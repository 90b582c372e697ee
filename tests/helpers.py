"""Shared helpers for the test-suite (random weights, relative error)."""
from __future__ import annotations

import torch


def randomize_(module: torch.nn.Module, seed: int = 0, scale: float = 0.02) -> torch.nn.Module:
    """Give every parameter and float buffer random, non-zero values (BN variances stay positive)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(module.named_parameters()) + list(module.named_buffers()):
            if not t.is_floating_point() or name.endswith("attn_mask"):
                continue
            noise = torch.randn(t.shape, generator=g) * scale
            if name.endswith("running_var"):
                t.copy_(1.0 + noise.abs() * 10)
            elif name.endswith(("weight", "gamma")) and t.ndim == 1:  # norm gains around 1
                t.copy_(1.0 + noise * 5)
            elif name.endswith("logit_scale"):
                t.fill_(4.0)
            else:
                t.add_(noise)
    return module


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def open_clip_twin(model, tmp_path):
    """The same weights in open_clip's own CLIP class (through our open_clip export)."""
    import open_clip

    from clipscratch.loading import export

    export(model, str(tmp_path / "oc.pt"), "open_clip")
    cfg = model.config
    ref = open_clip.model.CLIP(
        embed_dim=cfg.embed_dim, quick_gelu=cfg.activation == "quick_gelu",
        vision_cfg=dict(image_size=cfg.vision.image_size, layers=cfg.vision.layers, width=cfg.vision.width,
                        patch_size=cfg.vision.patch_size, head_width=cfg.vision.width // cfg.vision.num_heads),
        text_cfg=dict(context_length=cfg.text.context_length, vocab_size=cfg.text.vocab_size, width=cfg.text.width,
                      heads=cfg.text.heads, layers=cfg.text.layers),
    )
    ref.load_state_dict(torch.load(tmp_path / "oc.pt", weights_only=True)["state_dict"])
    return ref.eval()


# For the kernel scripts below: an FP8 copy against the values it stands for. Triton's interpreter keeps
# little more than the exponent when it converts to FP8, so here each value is within a factor of 2 of
# what it stands for (its sign, and the scale, applied), and saturated at the format's largest value;
# bench/gpu_checks.py ("fp8 kernel copies") checks a GPU's rounding to the bit.
FP8_CHECK = """
def check_fp8_copy(copy, values, top, smallest_normal=2.0 ** -14):
    want = values.float().clamp(-top, top)
    normal = want.abs() >= smallest_normal
    ratio = copy.float()[normal] / want[normal]
    assert ((ratio >= 0.5) & (ratio <= 2)).all()
    assert (copy.float()[want.abs() == top].abs() == top).all() and (want.abs() == top).any()
"""


def run_in_triton_interpreter(script: str) -> None:
    """Run ``script`` (Python that prints "kernel ok" when its checks pass) in a fresh interpreter
    with TRITON_INTERPRET=1, where Triton kernels run on the CPU; skips where the package's Triton
    kernels cannot run (no Triton, or torch without torch.library.triton_op)."""
    import os
    import subprocess
    import sys

    import pytest

    from clipscratch.models.triton_support import TRITON

    pytest.importorskip("triton")
    if not TRITON:
        pytest.skip("torch.library.triton_op needs torch >= 2.6")
    env = dict(os.environ, TRITON_INTERPRET="1")
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "kernel ok" in result.stdout
