"""GPU time of a call, for the benchmarks that time kernels (CUDA events, after warm-up)."""
import torch


def median_ms(fn, iters=20):
    """Median milliseconds of ``fn()`` over ``iters`` calls, after 3 warm-up calls."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]
