"""One code path for CPU and GPU: pick the device and the precision it runs fast.

bf16 autocast is only a speed-up where the hardware computes in bf16: 1.1-1.7x
for these nets on an AVX512 CPU with AVX512_BF16/AMX (reports/benchmarks.md), but
2-12x *slower* than fp32 on an AVX2-only CPU, where it is emulated (issue #13).
So `precision: auto` asks the hardware.
"""
from __future__ import annotations

import contextlib
import sys
from functools import lru_cache

import torch
from torch import nn

PRECISIONS = ("auto", "fp32", "bf16")
# torch.cpu.get_capabilities() flags for bf16 arithmetic in hardware. On x86 they
# only count when torch dispatches to its AVX512 kernels: with ATEN_CPU_CAPABILITY=avx2
# (or a build without them) bf16 is emulated even on an AMX CPU, 0.08x of fp32's
# speed for mlp1200 here (measured 2026-11-30 with benchmarks/precision.py).
_X86_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
_ARM_BF16_FLAGS = ("bf16", "sve_bf16")


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def cpu_capability() -> str:
    """The vector ISA torch dispatches CPU kernels to: AVX512, AVX2, DEFAULT, SVE256, ..."""
    return torch.backends.cpu.get_cpu_capability()


@lru_cache(maxsize=None)
def _cpu_flags() -> frozenset[str]:
    return frozenset(k for k, v in torch.cpu.get_capabilities().items() if v is True)


def native_bf16(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        if any(flag in _cpu_flags() for flag in _ARM_BF16_FLAGS):
            return True
        return cpu_capability().startswith("AVX512") and any(f in _cpu_flags() for f in _X86_BF16_FLAGS)
    return False


def resolve_precision(setting: str, device: torch.device) -> str:
    """The precision a model actually trains and infers in: "fp32" or "bf16". Asked once per
    model, by whoever builds it, which passes the answer down (so the warning shows once)."""
    if setting not in PRECISIONS:
        raise ValueError(f"precision {setting!r}: choose one of {PRECISIONS}")
    if setting == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    if setting == "bf16" and not native_bf16(device):
        print(f"warning: precision bf16 on a {describe(device)} without native bf16 is emulated and "
              "typically several times slower than fp32; `precision: auto` would pick fp32",
              file=sys.stderr, flush=True)
    return setting


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return f"GPU ({torch.cuda.get_device_name(device)})"
    return f"CPU ({cpu_capability()})"


def hardware_info(device: torch.device, precision: str) -> dict:
    """What a result depends on beyond params and code: kept with every trained
    model's metrics, so `dvc metrics diff` shows when two runs used different kernels."""
    info = {"precision": precision, "device": device.type, "cpu_capability": cpu_capability()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def autocast(device: torch.device, precision: str):
    """bf16 autocast for "bf16"; a no-op for "fp32". bf16 needs no loss scaling, unlike fp16."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def prepare_model(model: nn.Module) -> nn.Module:
    """channels_last for conv nets: oneDNN's and cuDNN's convolutions are fastest in it.
    Measured on an AVX-512 CPU with native bf16 (benchmarks/precision.py, reports/
    benchmarks.md): faster or equal for every conv net in both precisions (1.2-1.4x in
    bf16), so the layout does not depend on the precision."""
    if any(isinstance(m, nn.Conv2d) for m in model.modules()):
        return model.to(memory_format=torch.channels_last)
    return model


def inference_batch(shape, pixels: int = 1 << 20, most: int = 1000) -> int:
    """Images per inference batch: 1000 up to 32x32 (the MNIST and CIFAR numbers are
    bit-identical to before), fewer for larger images, so a batch's activations stay
    about the size of 1000 small images' (1000 at 128x128 took gigabytes)."""
    return max(16, min(most, pixels // (shape[-1] * shape[-2])))


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    # torch.use_deterministic_algorithms(True, warn_only=True) without the import of
    # torch._inductor (and torch._dynamo) it does to set inductor's flag too: about 2 s
    # of every stage's start-up, for a compiler no stage uses.
    torch._C._set_deterministic_algorithms(True, warn_only=True)
