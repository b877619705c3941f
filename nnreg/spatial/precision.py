"""The precision rule of :mod:`nnreg.spatial`: sampling grids and fields are float32 whatever the autocast context.

Under bf16 autocast (the trainer's default on CUDA) a network's velocity comes out of its last convolution in bf16.
A bf16 sampling grid is off by up to a quarter voxel at 80 voxels and loses small steps entirely, so every spatial
operation casts low-precision inputs to float32 (float64 stays float64, for references) and runs with autocast
disabled on the tensor's device type.
"""
from __future__ import annotations

import contextlib
from typing import Any

import torch

_AUTOCAST_DEVICE_TYPES = ("cpu", "cuda", "xpu", "mps", "hpu")


def spatial_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float64 if any of ``tensors`` is float64, otherwise float32 (bf16, fp16 and integer inputs alike)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def to_spatial(tensor: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``tensor`` in ``dtype`` (default :func:`spatial_dtype`); no copy when it already is."""
    return tensor.to(dtype or spatial_dtype(tensor))


def _autocast_available(device_type: str) -> bool:
    check = getattr(torch.amp, "is_autocast_available", None)
    return bool(check(device_type)) if check is not None else device_type in _AUTOCAST_DEVICE_TYPES


def autocast_disabled(device: torch.device | str) -> contextlib.AbstractContextManager[Any]:
    """Autocast off for ``device``'s type (a no-op for device types without autocast, e.g. ``meta``)."""
    device_type = torch.device(device).type
    if not _autocast_available(device_type):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, enabled=False)
