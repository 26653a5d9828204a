"""SDPA on a CPU with a boolean mask, an additive float mask (-inf or the dtype's minimum) and no
mask, at the shapes of the sampling engine's attention (docs/results/speed.md):

    python docs/results/speed/sdpa_masks.py

Prints median microseconds per call and whether the additive masks give bit-identical outputs.
"""

import time

import torch
import torch.nn.functional as F

SHAPES = {  # batch, query heads, queries, keys, head_dim, dtype (one K/V head, as Gemma)
    "dummy suffix fp32": (2, 8, 50, 1018, 16, torch.float32),
    "dummy suffix bf16": (2, 8, 50, 1018, 16, torch.bfloat16),
    "dummy prefix bf16": (2, 8, 968, 968, 16, torch.bfloat16),
    "full suffix bf16": (1, 8, 50, 1018, 256, torch.bfloat16),
    "full prefix bf16": (1, 8, 968, 968, 256, torch.bfloat16),
}


def median_us(fn, n: int = 30) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[n // 2] * 1e6


def main() -> None:
    torch.manual_seed(0)
    for name, (b, h, q, k, d, dtype) in SHAPES.items():
        query = torch.randn(b, h, q, d, dtype=dtype)
        key, value = torch.randn(b, 1, k, d, dtype=dtype), torch.randn(b, 1, k, d, dtype=dtype)
        allowed = torch.rand(b, 1, q, k) > 0.1
        allowed[..., 0] = True
        masks = {
            "bool": allowed,
            "float -inf": torch.zeros(b, 1, q, k, dtype=dtype).masked_fill(~allowed, float("-inf")),
            "float min": torch.zeros(b, 1, q, k, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min),
            "none": None,
        }
        outputs, times = {}, {}
        for label, mask in masks.items():

            def call(mask=mask, qkv=(query, key, value)):
                return F.scaled_dot_product_attention(*qkv, attn_mask=mask, enable_gqa=True)

            outputs[label], times[label] = call(), median_us(call)
        same = all(torch.equal(outputs["bool"], outputs[m]) for m in ("float -inf", "float min"))
        print(name, {m: round(t) for m, t in times.items()}, "additive == bool:", same)


if __name__ == "__main__":
    main()
