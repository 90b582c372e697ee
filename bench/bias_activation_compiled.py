"""Where the fused MLP backward (models/bias_activation.py) goes wrong under torch.compile on a
GPU (part 72: a compiled ViT-B/32 step with it was off eager autograd by 47% of the image tower's
gradient norm, 85% of the text tower's, while the same step compiled without it matched to 3e-6):

    python bench/bias_activation_compiled.py [--code-dir DIR]

Prints, fp32, at the ViT-B/32 image MLP's [6400, 3072] and an odd [1885, 2048]:
  accesses     which of the kernel's tensors torch's analysis finds it writing (Inductor trusts it
               to order the kernel against what reads and writes the same buffers)
  op           the registered operator alone, compiled vs eager, on given tensors
  op_produced  compiled with its inputs produced in the same graph (Inductor buffers)
  mlp          one MLP (c_fc, bias + GELU, c_proj) forward and backward, compiled vs eager; also
               with the forward as it was before the fix (no-op .to(), pytorch/pytorch#180642), and
               in bf16 with and without the fused backward
and writes the code Inductor generated for "op_produced" and "mlp" to --code-dir.
"""
import argparse
import os
import sys
from unittest import mock

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from clipscratch.models import bias_activation as ba  # noqa: E402
from gpu_checks import rel  # noqa: E402
from clipscratch.models.layers import MLP  # noqa: E402


def accesses(M, N):
    from torch._higher_order_ops import triton_kernel_wrap as w
    g, h, b = torch.randn(M, N, device="cuda"), torch.randn(M, N, device="cuda"), torch.randn(N, device="cuda")
    kwargs = dict(grad_ptr=g, h_ptr=h, bias_ptr=b, grad_h_ptr=torch.empty_like(h), partial_ptr=torch.empty(M // ba.ROWS + 1, N, device="cuda"),
                  M=M, N=N, QUICK=False, ROWS=ba.ROWS, BLOCK_M=ba.BLOCK_M, BLOCK_N=ba.BLOCK_N)
    try:
        if hasattr(w, "identify_accessed_tensors"):
            found = w.identify_accessed_tensors(ba.bias_activation_backward_kernel, kwargs, {})
            return "writes: " + ", ".join(sorted(d.name for d in found.read_writes.writes))
        return "mutated: " + ", ".join(sorted(w.identify_mutated_tensors(ba.bias_activation_backward_kernel, kwargs, {})))
    except Exception as e:
        return f"analysis failed: {type(e).__name__}: {str(e)[:200]}"


def compiled_vs_eager(fn, args, code_path=None):
    from torch._inductor.utils import run_and_get_code
    torch._dynamo.reset()
    eager = fn(*args)
    compiled, code = run_and_get_code(torch.compile(fn), *args)
    if code_path:
        with open(code_path, "w") as f:
            f.write("\n\n".join(code))
    return " ".join(f"{rel(c, e):.2e}" for c, e in zip(compiled, eager))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--code-dir", default=os.environ.get("OUT", "."))
    args = p.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    print(f"torch {torch.__version__}, triton {ba.triton.__version__}")
    op = torch.ops.clipscratch.bias_activation_backward
    for M, N in ((6400, 3072), (1885, 2048)):
        torch.manual_seed(0)
        g, h, b = torch.randn(M, N, device="cuda"), torch.randn(M, N, device="cuda"), torch.randn(N, device="cuda")
        print(f"[{M}, {N}] accesses: {accesses(M, N)}")
        print(f"[{M}, {N}] op (grad_h, grad_b rel err): {compiled_vs_eager(lambda g, h, b: op(g, h, b, False), (g, h, b))}")
        code = os.path.join(args.code_dir, f"op_produced_{M}x{N}.py")
        print(f"[{M}, {N}] op_produced: {compiled_vs_eager(lambda g, h, b: op(g * 2, h + 1, b, False), (g, h, b), code)}")

        mlp = MLP(N // 4, N, "gelu").cuda()
        mlp.fused_activation = True
        x = torch.randn(M, N // 4, device="cuda")

        def step(x):
            x = x.detach().requires_grad_()
            mlp.zero_grad()
            y = mlp(x)
            y.backward(torch.ones_like(y))
            return [y.detach(), x.grad] + [q.grad for q in mlp.parameters()]

        mlp.fused_activation = False
        eager_plain = step(x)
        mlp.fused_activation = True
        eager_fused = step(x)
        print(f"[{M}, {N}] mlp eager fused vs plain (y, x, W1, b1, W2, b2): "
              + " ".join(f"{rel(a, e):.2e}" for a, e in zip(eager_fused, eager_plain)))
        code = os.path.join(args.code_dir, f"mlp_{M}x{N}.py")
        print(f"[{M}, {N}] mlp compiled fused vs eager fused (y, x, W1, b1, W2, b2): {compiled_vs_eager(step, (x,), code)}")
        with mock.patch.object(ba, "as_dtype", lambda t, dtype: t.to(dtype)):  # the forward before the fix: no-op .to()
            print(f"[{M}, {N}] mlp compiled fused vs eager fused, no-op .to() forward: {compiled_vs_eager(step, (x,))}")

        def step_bf16(x):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                return step(x)

        for fused in (False, True):
            mlp.fused_activation = fused
            print(f"[{M}, {N}] mlp bf16 {'fused' if fused else 'plain'}, compiled vs eager: {compiled_vs_eager(step_bf16, (x,))}")


if __name__ == "__main__":
    main()
