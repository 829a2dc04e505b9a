"""The three velocity fields of DiffusionNFT: the policy being trained, the old policy that samples, and
the frozen reference the KL term pulls toward.

Full fine-tuning keeps three copies of the transformer (the old one and the reference frozen). With LoRA
(peft adapters on the attention and MLP linears) there is one transformer: the reference is the base with
the adapters scaled to zero, and the old policy is a second set of adapter weights swapped in for its
forward passes. Either way the old weights follow the trained ones softly after each step
(`nft.soft_update`), and everything that must survive a restart is in `checkpoint_state()`.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

import torch
from torch import nn

from lensgen.models.transformer import LensTransformer2DModel
from lensgen.rl.nft import soft_update

# The linears LoRA adapts: fused QKV and outputs of the joint attention, and the SwiGLU MLPs, both streams.
LORA_TARGETS = ["img_qkv", "txt_qkv", "to_out.0", "to_add_out", "w1", "w2", "w3"]


def add_lora(model: LensTransformer2DModel, rank: int, alpha: float) -> None:
    """Inject peft LoRA adapters in place; only they train (their B starts at 0: the model is unchanged)."""
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(r=rank, lora_alpha=alpha or rank, target_modules=LORA_TARGETS, lora_dropout=0.0)
    inject_adapter_in_model(config, model)


def _lora_layers(model: nn.Module) -> list[nn.Module]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [m for m in model.modules() if isinstance(m, BaseTunerLayer)]


class PolicyModels:
    """Forward passes of the policy (with gradient), the old policy and the reference (without)."""

    def __init__(self, model: LensTransformer2DModel, lora_rank: int = 0, lora_alpha: float = 0.0,
                 with_reference: bool = True, reference: LensTransformer2DModel | None = None):
        """reference: the transformer the KL term pulls toward (full fine-tuning; default a copy of `model`)."""
        self.lora = lora_rank > 0
        self.model = model
        if self.lora and reference is not None:
            raise ValueError("with LoRA the reference is the base model under the adapters; no other can be given")
        if self.lora:
            model.requires_grad_(False)
            add_lora(model, lora_rank, lora_alpha)
        if self.lora:
            self.old_module, self.reference = None, None
        else:
            self.old_module = copy.deepcopy(model).requires_grad_(False).eval()
            if reference is None and with_reference:
                reference = copy.deepcopy(model)
            self.reference = reference.requires_grad_(False).eval() if with_reference else None
        self.with_reference = with_reference
        self.refresh_parameters()

    def refresh_parameters(self) -> None:
        """Collect the trainable and old weights again: sharding replaces the parameters (FSDP2 makes them
        DTensors), so do this after `fully_shard` and before building the optimiser. The old LoRA weights
        start equal to the trained ones."""
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.names = [n for n, p in self.model.named_parameters() if p.requires_grad]
        self.old_weights = [p.detach().clone() for p in self.trainable] if self.lora \
            else list(self.old_module.parameters())

    def frozen_modules(self) -> list[nn.Module]:
        """The extra transformers to shard alongside the policy (full fine-tuning only)."""
        return [m for m in (self.old_module, self.reference) if m is not None]

    # ---- forward passes ---------------------------------------------------------------------------

    def __call__(self, *args, **kwargs) -> torch.Tensor:
        return self.model(*args, **kwargs)

    @torch.no_grad()
    def old(self, *args, **kwargs) -> torch.Tensor:
        if not self.lora:
            return self.old_module(*args, **kwargs)
        with self._swapped_adapters():
            return self.model(*args, **kwargs)

    @torch.no_grad()
    def ref(self, *args, **kwargs) -> torch.Tensor | None:
        if not self.with_reference:
            return None
        if not self.lora:
            return self.reference(*args, **kwargs)
        with self._adapters_off():
            return self.model(*args, **kwargs)

    @contextlib.contextmanager
    def _swapped_adapters(self) -> Iterator[None]:
        """The old adapter weights in place of the trained ones for one forward pass (no requires_grad change)."""
        saved = [p.detach().clone() for p in self.trainable]
        with torch.no_grad():
            for p, o in zip(self.trainable, self.old_weights, strict=True):
                p.copy_(o)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, s in zip(self.trainable, saved, strict=True):
                    p.copy_(s)

    @contextlib.contextmanager
    def _adapters_off(self) -> Iterator[None]:
        """The base model: every adapter's scale set to 0 for one forward pass."""
        layers = _lora_layers(self.model)
        saved = [dict(layer.scaling) for layer in layers]
        for layer in layers:
            for name in layer.scaling:
                layer.scaling[name] = 0.0
        try:
            yield
        finally:
            for layer, scaling in zip(layers, saved, strict=True):
                layer.scaling.update(scaling)

    # ---- the old policy's update and the checkpoint -------------------------------------------------

    def update_old(self, eta: float) -> None:
        """theta_old <- eta theta_old + (1 - eta) theta."""
        soft_update(self.old_weights, self.trainable, eta)

    def checkpoint_state(self) -> dict[str, dict[str, torch.Tensor]]:
        """Tensors a resumed run needs beyond the policy: the old weights (and the full reference copy)."""
        state = {"old": dict(zip(self.names, self.old_weights, strict=True))}
        if self.reference is not None:
            state["reference"] = self.reference.state_dict()
        return state

    def merged_state_dict(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A plain `LensTransformer2DModel` state dict from a full state dict of this model (e.g. the policy's
        with the EMA's trainable weights in): LoRA adapters merged into their base weights."""
        state = {k: v.detach().cpu().float() for k, v in state.items()}
        if not self.lora:
            return state
        scale = {name: layer.scaling["default"] for name, layer in self.model.named_modules()
                 if hasattr(layer, "scaling") and "default" in getattr(layer, "scaling", {})}
        merged = {}
        for key, value in state.items():
            if ".lora_" in key:
                continue
            if ".base_layer." in key:
                module = key.split(".base_layer.")[0]
                if key.endswith(".weight"):
                    a, b = state[f"{module}.lora_A.default.weight"], state[f"{module}.lora_B.default.weight"]
                    value = value + scale[module] * (b @ a)
                key = key.replace(".base_layer.", ".")
            merged[key] = value
        return merged


__all__ = ["LORA_TARGETS", "PolicyModels", "add_lora"]
