"""The base of every pretrained component used as-is (text encoders, latent codecs).

Such a component never trains: no parameter needs a gradient, and it stays in eval mode whatever its
parent module asks (dropout would make its features random). It is described by a small config JSON
(`config_dict()`), written into a pipeline folder beside or in place of its weights; relative paths in
that JSON resolve against the folder, so a model folder can be moved as a whole.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from lensgen.errors import UserError
from lensgen.io import atomic_write_json


@contextlib.contextmanager
def quiet_progress_bars(*libraries: str) -> Iterator[None]:
    """No progress bars from these Hugging Face libraries ("transformers", "diffusers") inside the block,
    the previous setting restored after: loading a small component takes a fraction of a second, and its
    "Loading weights" bar would clutter every command and ignore `-q`."""
    restore = []
    for name in libraries:
        hf_logging = importlib.import_module(f"{name}.utils.logging")
        if hf_logging.is_progress_bar_enabled():
            hf_logging.disable_progress_bar()
            restore.append(hf_logging.enable_progress_bar)
    try:
        yield
    finally:
        for enable in restore:
            enable()


class FrozenModule(nn.Module):
    """No gradients, always in eval mode, saved as a config JSON named `config_name`."""

    backend: ClassVar[str] = ""
    config_name: ClassVar[str] = ""

    def freeze(self) -> None:
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> FrozenModule:
        return super().train(False)

    @property
    def device(self) -> torch.device:
        return next((p.device for p in self.parameters()), torch.device("cpu"))

    @property
    def dtype(self) -> torch.dtype:
        return next((p.dtype for p in self.parameters()), torch.float32)

    def config_dict(self) -> dict:
        """What `build_*` needs to rebuild this component (its weights stay where `path` points)."""
        raise NotImplementedError

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        atomic_write_json(Path(directory) / self.config_name, self.config_dict())


def read_component_config(path: Path, path_keys: tuple[str, ...] = ("path",)) -> dict:
    """A component's config JSON, with the relative paths under `path_keys` resolved against its folder."""
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"malformed {path}: {err}") from None
    if not isinstance(config, dict):
        raise UserError(f"malformed {path}: expected a JSON object")
    for key in path_keys:
        value = config.get(key)
        if value and not Path(value).is_absolute():
            config[key] = str((path.parent / value).resolve())
    return config


__all__ = ["FrozenModule", "read_component_config"]
