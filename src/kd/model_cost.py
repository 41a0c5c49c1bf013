"""What a model costs to run: multiply-adds, parameters, CPU latency per image."""
from __future__ import annotations

import copy
import time
import warnings

import torch
from torch import nn

from kd.models import count_params


def count_macs(model: nn.Module, in_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates for one image, counted by fvcore.

    fvcore's FlopCountAnalysis counts one fused multiply-add as one "flop", so
    its total is a MAC count: a Linear(784, 1200) layer is 784*1200. It skips
    element-wise ops (normalisation, ReLU, dropout), which are tiny next to the
    matrix products.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fvcore imports torch.jit, deprecated in torch 2.x
        from fvcore.nn import FlopCountAnalysis

    model = copy.deepcopy(model).cpu().float().eval()
    x = torch.zeros(1, *in_shape)
    with torch.no_grad():
        flops = FlopCountAnalysis(model, x)
        flops.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        return int(flops.total())


@torch.no_grad()
def cpu_latency_ms(model: nn.Module, in_shape: tuple[int, ...], batch: int, *,
                   repeats: int, warmup: int = 2) -> float:
    """Median wall time of one forward pass on the CPU, per image, in ms.

    Measured with the torch thread count of the calling process, so numbers
    are only comparable between runs on the same machine and settings.
    """
    model = copy.deepcopy(model).cpu().float().eval()
    x = torch.rand(batch, *in_shape)
    times = []
    for i in range(warmup + repeats):
        t0 = time.perf_counter()
        model(x)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    times.sort()
    return 1000 * times[len(times) // 2] / batch


def model_cost(model: nn.Module, in_shape: tuple[int, ...]) -> dict:
    """Deterministic size numbers: equal on every rerun, so `dvc metrics diff` is quiet."""
    return {"macs": count_macs(model, in_shape), "params": count_params(model)}


def model_latency(model: nn.Module, in_shape: tuple[int, ...]) -> dict:
    return {
        "cpu_ms_per_image_batch1": round(cpu_latency_ms(model, in_shape, 1, repeats=50), 4),
        "cpu_ms_per_image_batch256": round(cpu_latency_ms(model, in_shape, 256, repeats=10), 4),
    }
