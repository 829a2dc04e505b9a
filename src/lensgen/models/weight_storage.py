"""How weights are stored on disk: fp32, bf16, int8 with one scale per output row, or int4 in groups.

Shipping models inside the package has a size budget (40 MB for all of them), so exports can store
every large 2-D weight as int8 with a per-row absmax scale (`name` holds the int8 values,
`name.int8_scale` the float32 scales), or as int4: each row cut into groups of `INT4_GROUP` values,
each group with its own float16 step and minimum (asymmetric, 16 levels), two values per byte
(`name` the packed uint8, `name.int4_scale` the (step, minimum) pairs, `name.int4_shape` the
original shape). Small tensors (norms, biases) stay float32. Loading dequantizes back to float, so
the model class never sees the storage format and released checkpoints (plain bf16/fp32 tensors)
load unchanged.

A fine-tuned model can also be stored as its difference to the model it was tuned from (`DELTA_KEY` in
the file's metadata names that model's folder, relative to the file's own): RL and distillation move
the weights by a few percent, so the difference stored as int4 is closer to the tuned model than the
whole weights stored as int8, in half the bytes, and shipped models share one base (found by its folder
name in the package when a shipped model's folder is copied elsewhere).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch

from lensgen import SHIPPED_MODELS_DIR
from lensgen.errors import UserError

STORAGES = ("fp32", "bf16", "int8", "int4")
SCALE_SUFFIX = ".int8_scale"
INT4_SCALE_SUFFIX, INT4_SHAPE_SUFFIX = ".int4_scale", ".int4_shape"
MIN_INT8_NUMEL = 16384  # smaller tensors are not worth a scale vector
AUX_SUFFIXES = (SCALE_SUFFIX, INT4_SCALE_SUFFIX, INT4_SHAPE_SUFFIX)  # stored beside a weight, not weights
DELTA_KEY = "lensgen_delta_from"  # metadata: the tensors are differences to this folder's weights
INT4_GROUP = 64  # values per int4 step: 4 bytes of (step, minimum) per 32 bytes of weights


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
        elif storage == "int4" and value.is_floating_point() and value.ndim == 2 and value.numel() >= MIN_INT8_NUMEL:
            out[name], out[name + INT4_SCALE_SUFFIX] = _pack_int4(value.float())
            out[name + INT4_SHAPE_SUFFIX] = torch.tensor(value.shape, dtype=torch.int64)
        else:
            out[name] = value.float().contiguous() if value.is_floating_point() else value.contiguous()
    return out


def unpack_state_dict(tensors: dict[str, torch.Tensor], dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """The float state dict (in `dtype`) from tensors written by `pack_state_dict` or any plain checkpoint."""
    state = {}
    for name in tensors:
        if name.endswith(AUX_SUFFIXES):
            continue
        value = stored_tensor(name, tensors.__getitem__, tensors.__contains__)
        state[name] = value.to(dtype) if value.is_floating_point() else value
    return state


def stored_tensor(name: str, get: Callable[[str], torch.Tensor], has: Callable[[str], bool]) -> torch.Tensor:
    """One weight as written, dequantized to float32 if it was stored as int8 or int4 (`get`/`has` read the
    stored tensors by name: a dict's, or an open safetensors file's for loading one tensor at a time)."""
    value = get(name)
    if has(name + SCALE_SUFFIX):
        return value.float() * get(name + SCALE_SUFFIX).float()
    if has(name + INT4_SCALE_SUFFIX):
        return _unpack_int4(value, get(name + INT4_SCALE_SUFFIX), get(name + INT4_SHAPE_SUFFIX).tolist())
    return value


def delta_base(weights_file: str | Path) -> Path | None:
    """The folder whose weights a safetensors file's tensors are differences to, or None for whole weights."""
    from safetensors import safe_open

    weights_file = Path(weights_file)
    with safe_open(str(weights_file), "pt") as f:
        relative = (f.metadata() or {}).get(DELTA_KEY)
    if not relative:
        return None
    base = shared_folder(weights_file.parent, relative)
    if not base.is_dir():
        raise UserError(f"{weights_file} stores the difference to the weights in {relative} (that is {base}), "
                        f"which does not exist: keep the two model folders side by side as shipped, or load the "
                        f"model where they are and save_pretrained it to store its weights whole")
    return base


def shared_folder(start: Path, relative: str) -> Path:
    """A folder another one's files point to (`relative` to `start`); for a copy of a shipped model's folder
    made elsewhere, the shipped folder of the same model and name (it ships too). May not exist."""
    folder = Path(os.path.normpath(Path(start) / relative))
    shipped = SHIPPED_MODELS_DIR / folder.parent.name / folder.name
    return shipped if not folder.is_dir() and shipped.is_dir() else folder


def _pack_int4(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(R, C) floats -> packed uint8 (R, G/2) and float16 (step, minimum) per group, G = C padded to groups.
    The levels are computed from the float16-rounded step and minimum, so unpacking is off by at most half
    a step."""
    r, c = rows.shape
    width = -(-c // INT4_GROUP) * INT4_GROUP
    # the padding repeats the row's last value, so it never widens the last group's range
    padded = torch.nn.functional.pad(rows, (0, width - c), mode="replicate") if width > c else rows
    groups = padded.reshape(r, width // INT4_GROUP, INT4_GROUP)
    low = groups.amin(dim=-1, keepdim=True).half()
    step = ((groups.amax(dim=-1, keepdim=True) - low.float()) / 15).clamp_min(1e-8).half()
    levels = torch.round((groups - low.float()) / step.float()).clamp(0, 15).to(torch.uint8).view(r, width)
    packed = levels[:, 0::2] | (levels[:, 1::2] << 4)
    return packed.contiguous(), torch.cat([step, low], dim=-1).contiguous()


def _unpack_int4(packed: torch.Tensor, scale: torch.Tensor, shape: list[int]) -> torch.Tensor:
    r, c = shape
    levels = torch.stack([packed & 15, packed >> 4], dim=-1).view(r, -1, INT4_GROUP).float()
    values = levels * scale[..., :1].float() + scale[..., 1:].float()
    return values.view(r, -1)[:, :c].contiguous()


__all__ = ["AUX_SUFFIXES", "DELTA_KEY", "STORAGES", "delta_base", "pack_state_dict", "stored_tensor",
           "unpack_state_dict"]
