"""Will it fit, at what batch, and how many FLOPs: one real training step of the real model, simulated.

Why: the question "does lens-3.8b train on my 8 (or 64) GPUs, at what batch" must be answered before
anyone spends GPU money, on a CPU box that cannot hold the model. `plan_step` runs the trainer's step
(forward, loss, backward, clipping, AdamW, EMA) on the model built as the trainer builds it (meta
device, FSDP2 with the trainer's mixed precision, activation checkpointing as asked), under
`FakeTensorMode` (tensors with shapes and no storage) and a fake process group of the given world size
(`backend="fake"`: every collective returns at once). Nothing is allocated: planning lens-3.8b keeps the
process under 2 GB of RSS.

Memory is `FSDPMemTracker`'s: it counts every storage alive at every op, by category, and keeps the
categories at the step's peak (less the global-shape stand-ins DTensor's sharding propagation makes under
our fake mode: see `_plan_tracker_class`). Sharded and gathered parameters, gradients (and their reduce-scatter
buffers), AdamW state, activations with backward temporaries and the inputs come from it; the EMA (fp32,
sharded like the parameters, resident throughout) and the frozen text encoder (see `TextEncoderCost`)
are added to that peak. FLOPs are counted by `FlopCounterMode` (with a formula for the CPU attention
kernel) in a pass of their own: nested in the memory tracker it keeps checkpointed activations alive.
They equal `lensgen.compute.training_flops` (plus the flash backward's recomputed QK^T), as a test holds.

`measure_step` runs the same step on real tensors (a real CPU run, e.g. under torchrun) with torch's
plain `MemTracker`, which knows nothing of FSDP and counts each real tensor storage: the test holds
the plan within 10 % of it.
"""

from __future__ import annotations

import contextlib
import functools
import math
import resource
import sys
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from lensgen.compute import StepShape, flop_counter, training_flops
from lensgen.errors import UserError
from lensgen.train.config import TrainConfig
from lensgen.train.ema import EMA
from lensgen.train.materialize import meta_transformer
from lensgen.train.objective import masked_mse, noisy_input
from lensgen.train.parallel import DistInfo

GIB = 2**30

# GPT-OSS-20B's published config (the fields that set its size); used when the model folder is not here
GPT_OSS_20B = {"num_hidden_layers": 24, "hidden_size": 2880, "intermediate_size": 2880, "num_local_experts": 32,
               "num_experts_per_tok": 4, "vocab_size": 201088, "num_attention_heads": 64,
               "num_key_value_heads": 8, "head_dim": 64}
TEXT_ENCODER_MODES = ("sharded", "node-sharded", "replicated", "precomputed")
GPUS_PER_NODE = 8


# ---- the step ---------------------------------------------------------------------------------------


@dataclass
class StepInputs:
    """One micro-batch: clean tokens (B, N, C), text features (B, S, L, D), sigma (B,), noise like tokens."""

    tokens: torch.Tensor
    text: torch.Tensor
    sigma: torch.Tensor
    noise: torch.Tensor
    grid: tuple[int, int]

    @classmethod
    def random(cls, batch: int, grid: tuple[int, int], channels: int, text_tokens: int, text_layers: int,
               text_dim: int, text_dtype: torch.dtype, device="cpu") -> StepInputs:
        n = grid[0] * grid[1]
        return cls(torch.randn(batch, n, channels, device=device),
                   torch.randn(batch, text_tokens, text_layers, text_dim, device=device).to(text_dtype),
                   torch.rand(batch, device=device), torch.randn(batch, n, channels, device=device), grid)

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return self.tokens, self.text, self.sigma, self.noise


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, ema: EMA, x: StepInputs, grad_clip: float,
               bf16_autocast: bool = False) -> torch.Tensor:
    """The trainer's optimisation step on one micro-batch (as `Trainer.train_step` does it)."""
    x_t, target = noisy_input(x.tokens, x.noise, x.sigma)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16_autocast else contextlib.nullcontext()
    with autocast:
        out = model(x_t, x.text, x.sigma, x.grid)
    loss = masked_mse(out.float(), target, None)
    loss.backward()
    for p in model.parameters():  # the last block's text MLP gets no gradient; the trainer zero-fills it
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    ema.update(model, 1)
    return loss.detach()


def create_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """AdamW creates its state on the first step; a step on zero gradients makes it exist (as in every step
    after the first) without running the model."""
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _storage_bytes(tensors) -> int:
    """Bytes of the distinct storages under `tensors` (local shards of DTensors)."""
    from torch.distributed.tensor import DTensor

    storages = [(t.to_local() if isinstance(t, DTensor) else t).untyped_storage() for t in tensors]
    # fake storages all sit at address 0: tell them apart by object (all are alive in `storages`)
    distinct = {id(s) if s.data_ptr() == 0 else s.data_ptr(): s for s in storages}
    return sum(s.nbytes() for s in distinct.values())


def _is_fake(t: torch.Tensor) -> bool:
    from torch._subclasses.fake_tensor import FakeTensor

    return isinstance(t, FakeTensor)


@functools.cache
def _plan_tracker_class():
    """`FSDPMemTracker` that leaves DTensor's sharding propagation out of the count (see `PlanMemTracker`)."""
    from torch.distributed._tools.fsdp2_mem_tracker import FSDPMemTracker
    from torch.distributed.tensor import DTensor
    from torch.distributed.tensor._dispatch import OpDispatcher
    from torch.distributed.tensor._sharding_prop import ShardingPropagator

    # where DTensor works out an op's output placement and shape (the second and third run under the first,
    # or under the C++ fast path's cache miss; either way every op they run is propagation, never the step's)
    propagation = [(OpDispatcher, "_propagate_op_sharding_dispatch_slow_path"),
                   (ShardingPropagator, "propagate_op_sharding_non_cached"),
                   (ShardingPropagator, "_propagate_tensor_meta_non_cached")]

    class PlanMemTracker(FSDPMemTracker):
        """To find a DTensor op's output shape, DTensor runs the op on stand-ins of its inputs at their
        *global* (unsharded) shape, made under the active fake mode (`detect_fake_mode()`). `FSDPMemTracker`
        means to skip those ops (it counts only ops under the fake mode it was entered in, which in a real
        run is none), but the planner enters it under its own FakeTensorMode, the very mode propagation then
        reuses: the stand-ins were counted as allocations. For `clip_grad_norm_`'s `_foreach_norm` over all
        gradients that is every gradient at full size in fp32 at once (15.3 GiB for lens-3.8b), for the
        first such op in the process only (DTensor caches the result). This tracker does not count ops
        that run inside propagation."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._propagating = 0
            self._originals = []

        def _propagating_wrapper(self, fn):
            @functools.wraps(fn)
            def propagate(*args, **kwargs):
                self._propagating += 1
                try:
                    return fn(*args, **kwargs)
                finally:
                    self._propagating -= 1
            return propagate

        def __enter__(self):
            if self._depth == 0:
                for owner, name in propagation:
                    original = owner.__dict__[name]
                    self._originals.append((owner, name, original))
                    setattr(owner, name, self._propagating_wrapper(original))
            return super().__enter__()

        def __exit__(self, *args):
            try:
                super().__exit__(*args)
            finally:
                if self._depth == 0:
                    while self._originals:
                        owner, name, original = self._originals.pop()
                        setattr(owner, name, original)

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if self._propagating:
                if any(issubclass(t, DTensor) for t in types):
                    return NotImplemented
                return func(*args, **(kwargs or {}))
            return super().__torch_dispatch__(func, types, args, kwargs)

    return PlanMemTracker


# ---- memory categories ------------------------------------------------------------------------------


@dataclass
class Memory:
    """Bytes per GPU at the step's peak, by category."""

    parameters: int = 0  # fp32 shards + gathered compute copies + all-gather buffers
    gradients: int = 0  # sharded + unsharded gradients + reduce-scatter buffers
    optimizer: int = 0  # AdamW moments
    ema: int = 0  # fp32 EMA shards
    activations: int = 0  # saved activations, backward temporaries, inputs
    text_encoder: int = 0  # the frozen LM's resident shards (and its gather buffers if they set the peak)

    @property
    def total(self) -> int:
        return self.parameters + self.gradients + self.optimizer + self.ema + self.activations + self.text_encoder


_GROUPS = {"Sharded Param": "parameters", "Unsharded Param": "parameters", "Buffer": "parameters",
           "All Gather": "parameters", "Sharded Grad": "gradients", "Unsharded Grad": "gradients",
           "Reduce Scatter": "gradients", "OptState": "optimizer", "Activation": "activations",
           "Temp": "activations", "Inputs": "activations",
           # torch's plain MemTracker (measure_step) names
           "Parameter": "parameters", "Gradient": "gradients", "Optstate": "optimizer", "Other": "activations"}


def _memory_from_snapshot(snapshot: dict, device: torch.device | None = None) -> tuple[Memory, int]:
    """A tracker's peak snapshot as Memory, and its total: its one device, or `device` where a real step on a
    GPU also left a few host tensors in it."""
    if len(snapshot) == 1:
        (per_device,) = snapshot.values()
    elif device is None:
        raise ValueError(f"a memory snapshot of {len(snapshot)} devices: name the one to read")
    else:
        per_device = snapshot[device]
    memory = Memory()
    for key, value in per_device.items():
        name = getattr(key, "value", key)
        if name == "Total":
            continue
        group = _GROUPS.get(name)
        if group is None:  # a category torch added since: count it rather than drop it
            group = "activations"
        setattr(memory, group, getattr(memory, group) + int(value))
    return memory, int(per_device["Total"])


# ---- the frozen text encoder ------------------------------------------------------------------------


@dataclass
class TextEncoderCost:
    """What the frozen LM costs each GPU, for a way of running it.

    sharded: FSDP2 across all ranks in bf16, no grad: 1/W of it resident, plus two gathered layers (the one
    running and the one prefetched) while it encodes. node-sharded: the same within each node of
    GPUS_PER_NODE GPUs, replicated across nodes (HSDP: all-gathers stay on the node's NVLink).
    replicated: the whole of it on every GPU. precomputed: nothing on the GPU; features come from disk
    (`features_bytes_per_sample` each, bf16)."""

    name: str
    params: int
    largest_layer_params: int
    active_params_per_token: int  # attention + router + the routed experts (MoE) per token
    layers: int
    hidden: int
    bytes_per_param: int = 2

    def resident(self, mode: str, world_size: int) -> int:
        full = self.params * self.bytes_per_param
        return {"sharded": math.ceil(full / world_size),
                "node-sharded": math.ceil(full / min(world_size, GPUS_PER_NODE)),
                "replicated": full, "precomputed": 0}[mode]

    def transient(self, mode: str) -> int:
        return 2 * self.largest_layer_params * self.bytes_per_param if mode.endswith("sharded") else 0

    def forward_flops(self, tokens: int) -> int:
        """Matmul FLOPs to encode one prompt of `tokens` tokens (template included), attention excluded."""
        return 2 * tokens * self.active_params_per_token

    def features_bytes_per_sample(self, text_tokens: int, text_layers: int) -> int:
        return text_tokens * text_layers * self.hidden * 2


def _meta_text_model(backend: str, path: str | None):
    """The encoder's transformers model on the meta device (its config from `path`, or GPT-OSS-20B's)."""
    from transformers import AutoConfig, AutoModel, GptOssConfig

    folder = Path(path) if path else None
    if backend == "minilm" and folder is None:
        from lensgen.models.text_encoder import _bundled_minilm

        folder = _bundled_minilm()
    if folder is not None and (folder / "config.json").is_file():
        config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
    elif backend == "gpt-oss":
        config = GptOssConfig(**GPT_OSS_20B)
    else:
        raise UserError(f"model.text_encoder.path: no config.json at {folder} to size the {backend} encoder from")
    with torch.device("meta"):
        return AutoModel.from_config(config), config


def text_encoder_cost(text_encoder: dict) -> TextEncoderCost:
    """Sizes of the configured frozen text encoder, from its config alone (built on the meta device)."""
    backend = text_encoder.get("backend", "minilm")
    model, config = _meta_text_model(backend, text_encoder.get("path"))
    blocks = model.layers if hasattr(model, "layers") else model.encoder.layer
    layers = text_encoder.get("layers") or [len(blocks) - 1]
    kept = max(layers) + 1  # blocks after the last selected one are dropped (never computed)
    block_params = [sum(p.numel() for p in b.parameters()) for b in blocks[:kept]]
    rest = sum(p.numel() for p in model.parameters()) - sum(sum(p.numel() for p in b.parameters()) for b in blocks)
    embed = model.get_input_embeddings().weight.numel()
    experts, active = getattr(config, "num_local_experts", 0), getattr(config, "num_experts_per_tok", 0)
    expert_params = sum(p.numel() for n, p in blocks[0].named_parameters() if ".experts." in f".{n}")
    per_token_block = block_params[0] - expert_params + (expert_params * active // experts if experts else 0)
    return TextEncoderCost(name=f"{backend} ({getattr(config, 'name_or_path', '') or type(model).__name__})",
                           params=sum(block_params) + rest, largest_layer_params=max(block_params),
                           active_params_per_token=per_token_block * kept + rest - embed,
                           layers=kept, hidden=config.hidden_size)


# ---- planning ---------------------------------------------------------------------------------------


@dataclass
class StepPlan:
    """One simulated step: per-GPU peak memory by category, and FLOPs per GPU."""

    resolution: int
    batch: int
    checkpointing: bool
    memory: Memory
    model_flops: int  # forward + backward of the model (lensgen.compute.training_flops), no recompute

    text_resident: int = 0  # the text encoder's resident share of memory.text_encoder

    @property
    def peak(self) -> int:
        return self.memory.total

    @property
    def step_peak(self) -> int:
        """The training step's peak with the encoder's resident shards but not its transient gathers
        (those only matter at small batches, where they are the peak; they do not grow with the batch)."""
        return self.memory.total - self.memory.text_encoder + self.text_resident


@contextlib.contextmanager
def fake_process_group(world_size: int):
    """A `backend="fake"` process group of `world_size` ranks in this process (we are rank 0), and its mesh.

    The mesh is made before FakeTensorMode is entered (made inside, it fails on a data-dependent check)."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.testing._internal.distributed.fake_pg import FakeStore

    if dist.is_initialized():
        raise UserError("the planner runs its own fake process group: run it as one process, not under torchrun")
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=world_size)
    try:
        yield init_device_mesh("cpu", (world_size,))
    finally:
        dist.destroy_process_group()


class Planner:
    """Plans for one config and world size: the sharded model, optimiser and EMA are built once (fake), then
    each (resolution, batch, checkpointing) step is simulated on them."""

    def __init__(self, config: TrainConfig, world_size: int, text_tokens: int | None = None,
                 text_encoder: str = "sharded", bf16: bool | None = None):
        from lensgen.train.trainer import transformer_config

        if world_size < 1:
            raise UserError(f"--gpus must be at least 1, got {world_size}")
        if text_encoder not in TEXT_ENCODER_MODES:
            raise UserError(f"text encoder mode must be one of {', '.join(TEXT_ENCODER_MODES)}, got {text_encoder!r}")
        self.config, self.world_size, self.text_mode = config, world_size, text_encoder
        self.model_config = transformer_config(config.model)
        # the planner plans GPUs: precision "auto" means bf16 there
        self.bf16 = config.system.precision != "fp32" if bf16 is None else bf16
        self.text_cost = text_encoder_cost(config.model.text_encoder)
        self.text_tokens = text_tokens or int(config.model.text_encoder.get("max_length") or 512)
        self.pixels_per_token = config.data.multiple

    def grid(self, resolution: int) -> tuple[int, int]:
        if resolution % self.pixels_per_token:
            raise UserError(f"resolution {resolution} is not a multiple of data.multiple={self.pixels_per_token}")
        side = resolution // self.pixels_per_token
        return side, side

    def _build(self, mesh, checkpointing: bool):
        """The model, optimiser (with its state) and EMA as the trainer builds them, as fake tensors.
        Call inside FakeTensorMode."""
        from lensgen.train.trainer import build_optimizer, parallelize

        system = replace(self.config.system, activation_checkpointing=checkpointing, compile=False, fsdp=True)
        model = meta_transformer(self.model_config)
        parallelize(model, system, DistInfo(rank=0, world_size=self.world_size), self.bf16, mesh)
        model.to_empty(device="cpu")
        optimizer = build_optimizer(model, self.config.optim, cuda=False)
        create_optimizer_state(model, optimizer)
        return model, optimizer, EMA(model, self.config.optim.ema_decay)

    def _inputs(self, resolution: int, batch: int) -> StepInputs:
        mc = self.model_config
        return StepInputs.random(batch, self.grid(resolution), mc.in_channels, self.text_tokens, mc.num_text_layers,
                                 mc.enc_hidden_dim, torch.bfloat16 if self.bf16 else torch.float32)

    def plan_step(self, resolution: int, batch: int, checkpointing: bool) -> StepPlan:
        """Per-GPU peak memory of one step (FSDPMemTracker on fake tensors), by category."""
        from torch._subclasses.fake_tensor import FakeTensorMode

        with fake_process_group(self.world_size) as mesh, FakeTensorMode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # FSDP's "returned a view" note on the model output
            model, optimizer, ema = self._build(mesh, checkpointing)
            inputs = self._inputs(resolution, batch)
            tracker = _plan_tracker_class()(model, optimizer)  # FSDPMemTracker, less DTensor's propagation
            tracker.track_inputs(inputs.tensors())
            with tracker:  # (no FlopCounterMode in here: nested, it keeps checkpointed activations alive)
                train_step(model, optimizer, ema, inputs, self.config.optim.grad_clip)
            memory, _ = _memory_from_snapshot(tracker.get_tracker_snapshot("peak"))
            memory.ema = _storage_bytes(ema.shadow.values())
            settled = memory.parameters + memory.optimizer  # what is left between steps, outside the EMA
        memory.text_encoder = self._text_encoder_bytes(memory.total - settled)
        grid = self.grid(resolution)
        shape = StepShape(batch, grid[0] * grid[1], self.text_tokens)
        return StepPlan(resolution, batch, checkpointing, memory, training_flops(self.model_config, shape),
                        self.text_cost.resident(self.text_mode, self.world_size))

    def count_flops(self, resolution: int, batch: int = 1) -> int:
        """FLOPs per GPU of one forward + backward, counted op by op by FlopCounterMode on fake tensors (a
        flash-attention backward's recomputed QK^T included; no activation checkpointing)."""
        from torch._subclasses.fake_tensor import FakeTensorMode

        with fake_process_group(self.world_size) as mesh, FakeTensorMode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model, _, _ = self._build(mesh, checkpointing=False)
            x = self._inputs(resolution, batch)
            with flop_counter() as counter:
                x_t, target = noisy_input(x.tokens, x.noise, x.sigma)
                masked_mse(model(x_t, x.text, x.sigma, x.grid).float(), target, None).backward()
        return counter.get_total_flops()

    def _text_encoder_bytes(self, headroom: int) -> int:
        """Resident shards, plus whatever of its gather buffers does not fit under the training step's peak
        (it encodes before the forward, when activations and gradients are not yet there)."""
        mode = self.text_mode
        return (self.text_cost.resident(mode, self.world_size)
                + max(0, self.text_cost.transient(mode) - headroom))


@dataclass
class Plan:
    """A table of simulated steps and, per (resolution, checkpointing), the largest batch that fits."""

    config_path: str
    world_size: int
    gpu_mem_gib: float
    text_mode: str
    text_tokens: int
    text_cost: TextEncoderCost
    text_layers: int  # LM layers the transformer reads (what precomputed features would store)
    steps: list[StepPlan] = field(default_factory=list)
    largest: dict[tuple[int, bool], StepPlan | None] = field(default_factory=dict)
    counted_flops_per_sample: dict[int, int] = field(default_factory=dict)  # FlopCounterMode, per resolution
    host_rss_gib: float = 0.0


def largest_batch(small: StepPlan, large: StepPlan, capacity: int) -> int:
    """The step's memory is affine in the batch size at a fixed resolution: the largest batch under
    `capacity` on the line through two simulated steps (to be confirmed by simulating it)."""
    slope = (large.step_peak - small.step_peak) / (large.batch - small.batch)
    if slope <= 0:  # not affine (seen once at lens-3.8b scale, batches 4 and 8 with checkpointing): assume the
        # activations of the larger step are proportional to its batch and the rest is fixed
        per_sample = large.memory.activations / large.batch
        return max(0, math.floor((capacity - large.step_peak + large.memory.activations) / per_sample))
    return max(0, small.batch + math.floor((capacity - small.step_peak) / slope))


def make_plan(config: TrainConfig, world_size: int, gpu_mem_gib: float, resolutions: list[int] | None = None,
              batches: tuple[int, int] = (1, 2), checkpointing: tuple[bool, ...] = (False, True),
              text_encoder: str = "sharded", text_tokens: int | None = None, config_path: str = "",
              count_flops: bool = True, progress=None) -> Plan:
    """Simulate `batches` at each resolution, with and without activation checkpointing; fit a line through
    the two peaks, and confirm the largest batch it predicts with one more simulated step."""
    if len(batches) != 2 or not 0 < batches[0] < batches[1]:
        raise UserError(f"--batches: two increasing batch sizes per GPU (e.g. 1,2), got {batches}")
    planner = Planner(config, world_size, text_tokens, text_encoder)
    capacity = int(gpu_mem_gib * GIB)
    plan = Plan(config_path, world_size, gpu_mem_gib, text_encoder, planner.text_tokens, planner.text_cost,
                planner.model_config.num_text_layers)
    for resolution in resolutions or list(config.data.bases):
        if count_flops:
            plan.counted_flops_per_sample[resolution] = planner.count_flops(resolution, 1)
        for ckpt in checkpointing:
            small, large = (planner.plan_step(resolution, b, ckpt) for b in batches)
            plan.steps += [small, large]
            best = largest_batch(small, large, capacity)
            confirmed = None
            while best >= 1:
                confirmed = small if best == small.batch else large if best == large.batch else (
                    planner.plan_step(resolution, best, ckpt))
                if confirmed.peak <= capacity:
                    break
                # the line was optimistic: refit it through the point that did not fit, and go below
                below = largest_batch(small, confirmed, capacity) if confirmed.batch != small.batch else 0
                best, confirmed = min(best - 1, below), None
            if confirmed is not None and confirmed not in plan.steps:
                plan.steps.append(confirmed)
            plan.largest[(resolution, ckpt)] = confirmed
            if progress:
                progress(resolution, ckpt, confirmed)
    plan.host_rss_gib = peak_rss_bytes() / GIB
    return plan


def peak_rss_bytes() -> int:
    """This program's peak resident memory. /proc's VmHWM where there is one: `ru_maxrss` also counts what the
    parent held when it forked us (kept across exec), so a planner started from a large process read as large."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # kB
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, kB elsewhere


# ---- real measurement (for the planner's test) ------------------------------------------------------


def measure_step(model: nn.Module, optimizer: torch.optim.Optimizer, ema: EMA, inputs: StepInputs,
                 grad_clip: float) -> tuple[Memory, int]:
    """The step's real peak: torch's plain `MemTracker` on real tensors counts every storage alive at every
    op (parameter shards, optimiser state, EMA and inputs registered up front, everything else as the ops
    create and free it; FSDP's storage resizes included). Returns it by category and its total."""
    from torch.distributed._tools.mem_tracker import MemTracker

    tracker = MemTracker()
    tracker.track_external(model, optimizer, *ema.shadow.values(), *inputs.tensors())
    with tracker:
        train_step(model, optimizer, ema, inputs, grad_clip)
    memory, total = _memory_from_snapshot(tracker.get_tracker_snapshot("peak"), inputs.tokens.device)
    # EMA shards and inputs were registered as "Other": name the EMA's share
    memory.ema = _storage_bytes(ema.shadow.values())
    memory.activations -= memory.ema
    return memory, total


__all__ = ["GPT_OSS_20B", "Memory", "Plan", "Planner", "StepInputs", "StepPlan", "TextEncoderCost",
           "create_optimizer_state", "fake_process_group", "largest_batch", "make_plan", "measure_step",
           "text_encoder_cost", "train_step"]
