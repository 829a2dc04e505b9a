"""How weights are stored on disk: fp32, bf16, or int8 with one scale per output row.

Shipping a model inside the package has a size budget (the Shapes model: 25 MB), so exports can
store every large 2-D weight as int8 with a per-row absmax scale (`name` holds the int8 values,
`name.int8_scale` the float32 scales); small tensors (norms, biases) stay float32. Loading
dequantizes back to float, so the model class never sees the storage format and released
checkpoints (plain bf16/fp32 tensors) load unchanged.
"""

from __future__ import annotations

import torch

STORAGES = ("fp32", "bf16", "int8")
SCALE_SUFFIX = ".int8_scale"
MIN_INT8_NUMEL = 16384  # smaller tensors are not worth a scale vector


def pack_state_dict(state: dict[str, torch.Tensor], storage: str = "fp32") -> dict[str, torch.Tensor]:
    """Tensors to write for `state` in the given storage."""
    if storage not in STORAGES:
        raise ValueError(f"weight storage must be one of {', '.join(STORAGES)}, got {storage!r}")
    out: dict[str, torch.Tensor] = {}
    for name, value in state.items():
        value = value.detach().cpu()
        if storage == "bf16" and value.is_floating_point():
            out[name] = value.to(torch.bfloat16).contiguous()
        elif storage == "int8" and value.is_floating_point() and value.ndim == 2 and value.numel() >= MIN_INT8_NUMEL:
            rows = value.float()
            scale = rows.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / 127.0
            out[name] = torch.round(rows / scale).clamp(-127, 127).to(torch.int8).contiguous()
            out[name + SCALE_SUFFIX] = scale.contiguous()
        else:
            out[name] = value.float().contiguous() if value.is_floating_point() else value.contiguous()
    return out


def unpack_state_dict(tensors: dict[str, torch.Tensor], dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """The float state dict (in `dtype`) from tensors written by `pack_state_dict` or any plain checkpoint."""
    state = {}
    for name, value in tensors.items():
        if name.endswith(SCALE_SUFFIX):
            continue
        scale = tensors.get(name + SCALE_SUFFIX)
        if scale is not None:
            value = value.float() * scale.float()
        state[name] = value.to(dtype) if value.is_floating_point() else value
    return state


__all__ = ["STORAGES", "pack_state_dict", "unpack_state_dict"]
