"""Where one training step spends its time: ``torch.profiler`` over a few steps, kernels grouped by what they do.

On CUDA the profile sums the device time of every kernel (``ProfilerActivity.CUDA``); the gap between that and
the step's wall time is time the GPU sat idle waiting for the host (launch overhead). On CPU (smoke tests) it
sums the self time of the operators instead. Kernel names are grouped by pattern: the first group whose pattern
matches wins, so convolutions built from implicit GEMMs count as convolutions, not matrix products.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from measure import synchronize

# (group, pattern over the lower-cased kernel or operator name), first match wins
GROUPS = (
    ("attention", r"flash|fmha|attention|scaled_dot_product|sdpa"),
    ("convolution", r"conv|implicit_gemm|fprop|dgrad|wgrad|winograd"),
    ("matmul", r"gemm|nvjet|cutlass|xmma|\bmm\b|_mm_|addmm|bmm|matmul|linear|triton_tem"),
    ("normalization", r"norm|welford|moments|fusedparams"),
    ("optimizer", r"adam|multi_tensor|foreach"),
    # at::native's copy kernels by their functor name ("gpu_kernel_impl_nocast" is in every elementwise kernel)
    ("layout & copies", r"copy_kernel|catarray|\bcat\b|transpose|permute|contiguous|nchw|nhwc|memcpy|memset|"
                        r"fill|to_copy|clone"),
    ("elementwise & reductions", r"elementwise|vectorized|reduce|triton|silu|gelu|mul|add|sum|mean|mse|sigmoid|exp"),
)


def group_of(name: str) -> str:
    lowered = name.lower()
    for group, pattern in GROUPS:
        if re.search(pattern, lowered):
            return group
    return "other"


def profile_steps(step: Callable[[], Any], device: torch.device, *, steps: int = 3, warmup: int = 2,
                  top: int = 10) -> dict[str, Any]:
    """Time per step by kernel group, the ``top`` kernels and, on CUDA, the GPU's idle share of the wall time.

    ``step`` must already be warm (compiled, autotuned); ``warmup`` more calls run before profiling anyway.
    """
    for _ in range(warmup):
        step()
    synchronize(device)
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]
    wall = torch.cuda.Event(enable_timing=True) if cuda else None
    with profile(activities=activities) as prof:
        start = torch.cuda.Event(enable_timing=True) if cuda else None
        if start is not None:
            start.record()
        for _ in range(steps):
            step()
        if wall is not None:
            wall.record()
        synchronize(device)
    per_kernel: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])  # name -> [µs, calls]
    for event in prof.events():
        if getattr(event, "is_user_annotation", False):
            continue  # a range around kernels counted themselves (e.g. "Optimizer.step#AdamW.step" on the GPU)
        if cuda and event.device_type == DeviceType.CUDA:
            us = event.time_range.elapsed_us()
        elif not cuda and event.device_type == DeviceType.CPU:
            us = event.self_cpu_time_total
        else:
            continue
        per_kernel[event.name][0] += us
        per_kernel[event.name][1] += 1
    kernels = {name: (us / 1e3 / steps, calls / steps) for name, (us, calls) in per_kernel.items()}
    out = summarize(kernels, top)
    out["steps"] = steps
    if start is not None and wall is not None:
        out["wall_ms"] = start.elapsed_time(wall) / steps
        out["idle_share"] = max(0.0, 1 - out["busy_ms"] / out["wall_ms"])
    return out


def summarize(kernels: dict[str, tuple[float, float]], top: int = 10) -> dict[str, Any]:
    """``{kernel name: (ms per step, calls per step)}`` → busy time, time per group, the ``top`` kernels, and
    every kernel under its full name (templated names often differ only after a few hundred characters)."""
    groups: dict[str, float] = defaultdict(float)
    for name, (ms, _) in kernels.items():
        groups[group_of(name)] += ms
    ranked = sorted(kernels.items(), key=lambda kv: -kv[1][0])
    return {
        "busy_ms": sum(groups.values()),
        "groups_ms": dict(sorted(groups.items(), key=lambda kv: -kv[1])),
        "top": [{"name": name[:120], "group": group_of(name), "ms": ms, "calls": calls}
                for name, (ms, calls) in ranked[:top]],
        "kernels": {name: [round(ms, 4), calls] for name, (ms, calls) in ranked},
    }


#: GPU-side ranges that torch.profiler reports beside the kernels they contain (filtered by
#: ``is_user_annotation`` now; profiles stored before the filter counted them twice).
ANNOTATIONS = re.compile(r"^(Optimizer\.step#|Optimizer\.zero_grad#|ProfilerStep#)")


def drop_annotations(profile: dict[str, Any]) -> dict[str, Any]:
    """A stored profile without the time of annotation ranges it counted as kernels."""
    out = {**profile, "groups_ms": dict(profile["groups_ms"]), "kernels": dict(profile["kernels"])}
    for name in [n for n in out["kernels"] if ANNOTATIONS.match(n)]:
        ms = out["kernels"].pop(name)[0]
        group = group_of(name)
        out["groups_ms"][group] -= ms
        out["busy_ms"] -= ms
    out["groups_ms"] = dict(sorted(((g, ms) for g, ms in out["groups_ms"].items() if ms > 1e-9),
                                   key=lambda kv: -kv[1]))
    out["top"] = [k for k in profile["top"] if not ANNOTATIONS.match(k["name"])]
    if profile.get("wall_ms"):
        out["idle_share"] = max(0.0, 1 - out["busy_ms"] / profile["wall_ms"])
    return out
