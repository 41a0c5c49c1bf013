"""`precision: auto` asks the hardware; the capability is mocked so every case runs on any CPU."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from kd import device as kd_device
from kd.checkpoint import new_model
from kd.device import autocast, hardware_info, prepare_model, resolve_precision

CPU = torch.device("cpu")
AVX2 = {"architecture": "x86_64", "avx2": True, "avx512_f": False, "avx512_bf16": False, "amx_bf16": False}
AVX512 = {**AVX2, "avx512_f": True}
AVX512_BF16 = {**AVX512, "avx512_bf16": True}
AMX = {**AVX512, "amx_bf16": True, "amx_tile": True}
ARM_BF16 = {"architecture": "aarch64", "neon": True, "bf16": True}
ARM = {"architecture": "aarch64", "neon": True, "bf16": False}


@pytest.fixture
def cpu_flags(monkeypatch):
    def use(flags, capability="AVX2"):
        monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: flags)
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
        kd_device._cpu_flags.cache_clear()
    yield use
    kd_device._cpu_flags.cache_clear()


@pytest.mark.parametrize("flags, capability, expected", [
    (AVX2, "AVX2", "fp32"), (AVX512, "AVX512", "fp32"), (ARM, "DEFAULT", "fp32"),
    (AVX512_BF16, "AVX512", "bf16"), (AMX, "AVX512", "bf16"), (ARM_BF16, "DEFAULT", "bf16"),
    # torch held to its AVX2 kernels (ATEN_CPU_CAPABILITY=avx2) emulates bf16 even on AMX
    (AMX, "AVX2", "fp32"), (AVX512_BF16, "AVX2", "fp32"),
])
def test_auto_picks_bf16_only_where_the_cpu_computes_it(cpu_flags, flags, capability, expected):
    cpu_flags(flags, capability)
    assert resolve_precision("auto", CPU) == expected


@pytest.mark.parametrize("flags", [AVX2, AMX])
def test_explicit_fp32_is_always_fp32(cpu_flags, flags, capsys):
    cpu_flags(flags)
    assert resolve_precision("fp32", CPU) == "fp32"
    assert capsys.readouterr().err == ""


def test_explicit_bf16_without_native_support_runs_with_one_warning(cpu_flags, capsys):
    cpu_flags(AVX2, "AVX2")
    assert resolve_precision("bf16", CPU) == "bf16"
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "emulated" in err[0] and "AVX2" in err[0] and "fp32" in err[0]


def test_explicit_bf16_with_native_support_is_silent(cpu_flags, capsys):
    cpu_flags(AMX, "AVX512")
    assert resolve_precision("bf16", CPU) == "bf16"
    assert capsys.readouterr().err == ""


def test_auto_on_cuda_follows_the_gpu(monkeypatch):
    gpu = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert resolve_precision("auto", gpu) == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    assert resolve_precision("auto", gpu) == "fp32"


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="fp16"):
        resolve_precision("fp16", CPU)


def test_hardware_info_names_precision_and_capability(cpu_flags):
    cpu_flags(AVX2, "AVX2")
    assert hardware_info(CPU, "fp32") == {"precision": "fp32", "device": "cpu", "cpu_capability": "AVX2"}


def test_channels_last_for_conv_nets():
    conv = next(m for m in prepare_model(new_model("resnet8", "cifar10")).modules()
                if isinstance(m, nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    fresh = next(m for m in new_model("resnet8", "cifar10").modules() if isinstance(m, nn.Conv2d))
    assert not fresh.weight.is_contiguous(memory_format=torch.channels_last)  # the change is prepare_model's
    mlp = prepare_model(new_model("mlp800", "mnist"))  # nothing to convert, nothing breaks
    assert mlp(torch.rand(2, 1, 28, 28)).shape == (2, 10)


def test_autocast_fp32_is_a_no_op_and_bf16_computes_in_bf16():
    lin = nn.Linear(4, 3)
    x = torch.rand(2, 4)
    with autocast(CPU, "fp32"):
        assert lin(x).dtype == torch.float32
    with autocast(CPU, "bf16"):
        assert lin(x).dtype == torch.bfloat16


def test_seed_everything_turns_on_deterministic_algorithms_without_loading_the_compiler():
    # In a fresh interpreter: torch._dynamo costs every stage ~2 s of start-up.
    code = ("import sys, torch; from kd.device import seed_everything; seed_everything(0); "
            "print(torch.are_deterministic_algorithms_enabled(), "
            "torch.is_deterministic_algorithms_warn_only_enabled(), 'torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(Path(kd_device.__file__).parents[1])})
    assert out.stdout.split() == ["True", "True", "False"]
