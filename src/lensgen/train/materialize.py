"""Build the transformer without materialising it: meta device, then FSDP2 shards, then each shard filled.

Why: a plain build of lens-3.8b puts 16 GB of fp32 weights on every GPU before anything is sharded (and
the EMA copies them again). Built on the meta device the model has shapes and no storage; `fully_shard`
turns each parameter into a DTensor whose local shard is 1/W of it; `to_empty` allocates only those
shards; `init_shards` or `load_shards` fills them. No rank ever holds the model, or the EMA, whole.

`init_shards` replays a plain build's random stream: modules are visited in construction order
(`named_modules` order is registration order, which is construction order in our model) and each one's
own `reset_parameters` runs on full-size CPU tensors of that one module; every rank keeps its rows.
The most ever held at once is one module (lens-3.8b's largest Linear, 1536 -> 9216: 57 MB). With the
global RNG in the same state, the weights are bit-identical to `LensTransformer2DModel(config)`; a test
holds it under torchrun with two ranks.
"""

from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path

import torch
from torch import nn

from lensgen.errors import UserError
from lensgen.models.transformer import (
    CONFIG_NAME,
    LensTransformer2DModel,
    LensTransformerConfig,
    weight_map,
)
from lensgen.models.weight_storage import AUX_SUFFIXES, delta_base, stored_tensor


def meta_transformer(config: LensTransformerConfig) -> LensTransformer2DModel:
    """The model with every parameter on the meta device (shapes only: nothing allocated)."""
    with torch.device("meta"):
        return LensTransformer2DModel(config)


def pretrained_config(directory: str | Path) -> LensTransformerConfig:
    """The transformer config of a diffusers-style folder, without reading its weights."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise UserError(f"no transformer config at {path}: expected a diffusers-style folder with {CONFIG_NAME}")
    try:
        config = LensTransformerConfig.from_dict(json.loads(path.read_text()))
        config.validate()
    except (json.JSONDecodeError, TypeError, ValueError) as err:
        raise UserError(f"malformed transformer config {path}: {err}") from None
    return config


def _copy_into(param: torch.Tensor, full: torch.Tensor) -> None:
    """Write this rank's part of `full` (the whole parameter, on CPU) into `param` (a DTensor shard or plain)."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if isinstance(param, DTensor):
        # src_data_rank=None: every rank holds the same `full`, so each keeps its own chunk with no traffic
        local = distribute_tensor(full.to(param.device, param.dtype), param.device_mesh, param.placements,
                                  src_data_rank=None)
        param.copy_(local)
    else:
        param.copy_(full.to(param.device, param.dtype))


def _check_no_buffers(model: nn.Module) -> None:
    names = [name for name, _ in model.named_buffers()]
    if names:  # to_empty leaves buffers uninitialised; our transformer has none, a new one would need care here
        raise TypeError(f"materialize: buffers {names[:3]} would stay uninitialised")


@torch.no_grad()
def init_shards(model: nn.Module) -> None:
    """Fill every (possibly sharded, `to_empty`-allocated) parameter as a plain build would, module by module,
    drawing from the global RNG in the same order."""
    _check_no_buffers(model)
    for name, module in model.named_modules():
        own = dict(module.named_parameters(recurse=False))
        if not own:
            continue
        if not hasattr(module, "reset_parameters"):
            raise TypeError(f"materialize: module {name or 'root'} ({type(module).__name__}) has parameters "
                            f"but no reset_parameters()")
        saved = {key: module._parameters[key] for key in own}
        try:
            for key, p in own.items():  # a full-size stand-in for this module only
                module._parameters[key] = nn.Parameter(torch.empty(p.shape, dtype=torch.float32), requires_grad=False)
            module.reset_parameters()
            full = {key: module._parameters[key].detach() for key in own}
        finally:
            module._parameters.update(saved)
        for key, p in own.items():
            _copy_into(p, full[key])


@torch.no_grad()
def load_shards(model: nn.Module, directory: str | Path) -> None:
    """Fill the parameters from a pipeline's transformer folder, reading one tensor at a time (int8- and int4-stored
    weights dequantised and differences added to their base as `from_pretrained` does), each rank keeping its own
    rows."""
    from safetensors import safe_open

    _check_no_buffers(model)
    directory = Path(directory)
    files = weight_map(directory)
    params = dict(model.named_parameters())
    missing = sorted(set(params) - set(files))
    unexpected = sorted(n for n in set(files) - set(params) if not n.endswith(AUX_SUFFIXES))
    if missing or unexpected:
        raise UserError(f"weights in {directory} do not match the config: missing {missing[:5]}, "
                        f"unexpected {unexpected[:5]}")
    base = delta_base(next(iter(files.values()))) if files else None
    base_files = weight_map(base) if base is not None else {}
    if base is not None and delta_base(next(iter(base_files.values()))) is not None:
        raise UserError(f"{directory} stores differences to {base}, which stores differences itself: the base "
                        f"must hold whole weights")
    with ExitStack() as stack:  # each file opened once, its tensor names listed once
        opened = {}

        def read(file: Path, name: str) -> torch.Tensor:
            if file not in opened:
                f = stack.enter_context(safe_open(str(file), "pt"))
                opened[file] = (f, set(f.keys()))
            f, keys = opened[file]
            return stored_tensor(name, f.get_tensor, keys.__contains__)

        for name, param in params.items():
            value = read(files[name], name).float()
            if name in base_files:  # a difference to the base's weights (save_pretrained(delta_from=...))
                value = value + read(base_files[name], name).float()
            _copy_into(param, value)


__all__ = ["init_shards", "load_shards", "meta_transformer", "pretrained_config"]
