"""Which accelerator a run uses: ``cpu``, ``cuda`` or ``npu`` (Huawei Ascend through torch_npu).

One codebase serves all three; this module is the only place that knows how each is switched on.
Asking for a device that this installation cannot drive is a clear error that says how to fix it,
never an ImportError traceback from deep inside a training run.
"""
from __future__ import annotations

import importlib.util

import torch

DEVICES = ("cpu", "cuda", "npu")


class DeviceError(RuntimeError):
    """The requested device is not usable here."""


def _import_torch_npu() -> None:
    """Import torch_npu, which registers the ``npu`` device with torch."""
    if importlib.util.find_spec("torch_npu") is None:
        raise DeviceError(
            "device 'npu' needs torch_npu, which is not installed: "
            "run tools/setup.sh --device npu (with the Ascend CANN toolkit's set_env.sh sourced)")
    try:
        import torch_npu  # noqa: F401  (import registers torch.npu)
    except Exception as err:  # a broken CANN install fails here, with its own message
        raise DeviceError(f"torch_npu is installed but failed to load ({err}); "
                          "is the CANN toolkit's set_env.sh sourced?") from err


def available_device() -> str:
    """The best device present: cuda, then npu (when torch_npu is installed), then cpu."""
    if torch.cuda.is_available():
        return "cuda"
    if importlib.util.find_spec("torch_npu") is not None:
        try:
            _import_torch_npu()
            if torch.npu.is_available():
                return "npu"
        except DeviceError:
            pass
    return "cpu"


def flush_denormals() -> None:
    """Make this process's CPU arithmetic treat denormal floats (below ~1.2e-38) as zero.

    Training can drive values there (probabilities and moments that decay towards zero), and x86
    CPUs take a slow path for every operation that touches one: a trained mini-recipe encoder's
    training step took 0.52 s on a 2-core Intel Xeon and 0.27 s with denormals flushed, and its
    seven epochs 24 min against 15. What is lost is bit-for-bit equality with runs that kept them:
    that encoder's training loss was the same to three decimals for six epochs, and the recipe's
    three-seed means moved by less than their standard deviations (egs/mini/NOTES.md, "Precision and machines").
    ``bench/denormals.py`` measures the slow path on the CPU at hand. Threads inherit the setting when they are created, so it is
    set before torch's thread pool first runs (``resolve_device`` does it for ``cpu``). A no-op where
    torch does not support it.
    """
    torch.set_flush_denormal(True)


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX): only there can bf16 autocast
    on CPU be expected to pay (``bench/encoder_bf16.py`` measures it on the CPU at hand)."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch.cpu's own probes
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def resolve_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto``/``cpu``/``cuda``/``npu`` -> the torch device this process (of rank ``local_rank``) uses.

    For ``cpu`` it also flushes denormal floats to zero (:func:`flush_denormals`): up to twice as fast.
    """
    if name == "auto":
        name = available_device()
    if name not in DEVICES:
        raise DeviceError(f"unknown device '{name}': choose one of auto, {', '.join(DEVICES)}")
    if name == "cpu":
        flush_denormals()
        return torch.device("cpu")
    if name == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError("device 'cuda' was asked for but torch sees no CUDA GPU "
                              f"(torch {torch.__version__}; CPU-only build or no driver?)")
        return torch.device("cuda", local_rank)
    _import_torch_npu()
    if not torch.npu.is_available():
        raise DeviceError("device 'npu' was asked for but torch_npu sees no Ascend NPU")
    return torch.device("npu", local_rank)


def distributed_backend(device: torch.device) -> str:
    """The collective backend for a device: NCCL on GPUs, HCCL on Ascend, gloo on CPU."""
    return {"cuda": "nccl", "npu": "hccl"}.get(device.type, "gloo")
