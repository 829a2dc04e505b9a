"""Typed configuration of `lensgen rl`: the sections of its YAML file, read by `lensgen.config.load_config`."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from lensgen.config import Override, Validated
from lensgen.config import load_config as load_typed_config
from lensgen.data.buckets import BucketTable
from lensgen.data.sources import SOURCES
from lensgen.flow.sampler import SOLVERS
from lensgen.models.weight_storage import STORAGES
from lensgen.rl.nft import ADVANTAGE_SCALES
from lensgen.shapes.rubrics import SHAPE_CREDITS


@dataclass
class RLModelConfig:
    init_from: str = "src/lensgen/assets/shapes-tiny-base"  # the pretrained pipeline folder RL starts from (and the KL reference)
    lora_rank: int = 0  # 0: full fine-tuning; > 0: LoRA adapters (peft) of this rank on the attention and MLP linears
    lora_alpha: float = 0.0  # 0: the rank (scale 1)
    # the pipeline folder whose transformer the KL term pulls toward (full fine-tuning; same architecture);
    # empty: init_from. E.g. RL from an earlier RL model while the pull stays on the pretrained one.
    reference_from: str = ""


@dataclass
class RLDataConfig:
    prompts: str = "data/rl-prompts.jsonl"  # `lensgen data rl-prompts` output (prompt, rubric per line)
    fraction: float = 1.0  # use the first fraction of the prompts (the coverage ablation: 0.25, 0.5, 1)
    prompts_per_step: int = 16  # Lens: 48
    images_per_prompt: int = 8  # G, the group size; Lens: 24
    buckets_per_prompt: int = 2  # a group's images spread over this many buckets (sizes) of the table
    bases: list[int] = field(default_factory=lambda: [48, 64, 80])  # bucket size classes (as training)
    multiple: int = 8
    # [[height, width], ...]: collect only at these sizes of the table (e.g. the model's default size, where
    # its users and ShapesEval sample; a group spreads over at most this many); empty: every bucket
    sizes: list[list[int]] = field(default_factory=list)


@dataclass
class RLSampleConfig:
    solver: str = "dpm2"  # euler | dpm2 (DPM-Solver++ 2M, as the reference)
    steps: int = 10  # sampler steps of data collection (CFG-free)
    batch_size: int = 32  # images per sampler call
    timestep_fraction: float = 0.99  # train on the first int(steps * fraction) noise levels of the sampler's grid
    train_levels: int = 0  # per sample, that many of those levels drawn at random (0: every one, as published)
    # the optim.kl_classifier classifier's guidance in the sampler itself (0: off), toward each prompt's rubric,
    # at levels up to classifier_max_sigma: the collected images are what the guided sampler draws
    classifier_scale: float = 0.0
    classifier_max_sigma: float = 0.9


@dataclass
class RLRewardConfig:
    weights: dict = field(default_factory=lambda: {"rubric": 0.5, "geneval": 0.5})  # reward name -> weight
    judge: dict = field(default_factory=dict)  # the VLM judge's settings (base_url, model, ...) when "vlm" is used
    # partial credit of a shape item for a blob the judge reads as another shape: "fixed" (one margin for every
    # pair) or "pair" (each pair's template distance: discs on a hexagon prompt are told apart)
    shape_credit: str = "fixed"


OBJECTIVES = ("nft", "backprop")


@dataclass
class RLOptimConfig:
    # nft: DiffusionNFT on the rewards of collected images; backprop: reward backpropagation, the judge's shape
    # margins differentiated through the decoder and the sampling chain into the policy (rl/backprop.py)
    objective: str = "nft"
    steps: int = 200  # RL steps (one collection + optim.updates_per_step optimiser steps each)
    lr: float = 3e-5
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    train_batch_size: int = 32  # samples per forward/backward
    updates_per_step: int = 1  # optimiser steps per collection, each on its share of the samples (flow_grpo: 2)
    nft_beta: float = 1.0  # beta of the implicit policies
    adaptive_weight: bool = True  # the per-sample adaptive weighting of the x0 regression (as published)
    kl_weight: float = 1e-4  # pull to the reference (the pretrained model); 0 skips the reference pass
    # CFG scale of what the KL term pulls toward: the reference's velocity guided with the empty prompt (the
    # sampler's CFG), which distils guidance into the CFG-free policy; 1: the conditional velocity (one pass)
    kl_guidance: float = 1.0
    # a `lensgen train-classifier` folder: the KL pull aims at the reference's velocity plus that latent
    # classifier's guidance toward what each prompt's rubric asks (models/latent_classifier.py); empty: none
    kl_classifier: str = ""
    kl_classifier_scale: float = 30.0  # the guidance scale
    kl_classifier_max_sigma: float = 0.8  # guide only at noise levels up to this one
    adv_clip: float = 5.0
    advantage_std: str = "global"  # divide by the std of all rewards (as published) or "group": each group's own
    old_decay_rate: float = 0.001  # eta = min(rate * step, cap)
    old_decay_cap: float = 0.5
    ema_decay: float = 0.9  # the evaluation EMA (what is exported)
    seed: int = 0


@dataclass
class RLPtxConfig:
    """The pretraining anchor (InstructGPT's PPO-ptx): the flow-matching loss on pretraining data beside the NFT
    loss, so that the data holds what the reward does not pay for (`rl/ptx.py`)."""

    weight: float = 0.0  # its weight in every optimiser step; 0: off
    source: str = "shapes"  # shapes | shards | stream (as `lensgen train`'s data.source)
    shards: str = ""  # the shards' folder or pattern for shards | stream
    items: int = 200000  # Shapes scenes to draw from (the pretraining config's data.num_items)
    batch_size: int = 32  # images per anchor batch, one bucket each
    caption: str = "short"  # short | dense | mixed (mixed: dense with probability dense_prob, per batch)
    dense_prob: float = 0.1


@dataclass
class RLBackpropConfig:
    """Reward backpropagation (optim.objective: backprop, `rl/backprop.py`)."""

    # a matched object's margin over the best other shape, in units of how far the judge holds the asked shape
    # from its nearest other, counts up to this and no further: a shape read right is not pushed on
    margin_cap: float = 0.5
    # the weight of an object's colour margin (where the prompt asks its colour) beside its shape margin
    colour_weight: float = 1.0
    # gradient through the sampling steps at noise levels up to this one (1: the whole chain)
    grad_below: float = 1.0
    # the weight of a sign's word: the OCR's CTC log-likelihood of the asked word per character
    # (shapes/soft_reader.py); 0 leaves sign prompts out
    text_weight: float = 0.0
    # a word the OCR reads with this probability per character (geometric mean) is pushed no further
    text_cap: float = 0.8


@dataclass
class RLSystemConfig:
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16
    activation_checkpointing: bool = False
    compile: bool = False
    fsdp: bool | str = "auto"
    threads: int | None = None
    reward_workers: int = 2  # threads scoring rewards while the next batch samples


@dataclass
class RLLogConfig:
    every: int = 1
    eval_every: int = 25  # held-out ShapesEval on a fixed subset (0 = never)
    eval_limit: int = 4  # prompts per task in that subset
    eval_images_per_prompt: int = 2
    eval_steps: int = 20  # sampler steps of the evaluation (the export's default)
    tensorboard: bool = True


@dataclass
class RLCheckpointConfig:
    every: int = 10
    keep: int = 2
    export_storage: str = "fp32"  # fp32 | bf16 | int8 | int4 (models/weight_storage.py)
    export_steps: int = 20  # the exported pipeline's default sampler steps (CFG 1: no uncond pass)


@dataclass
class RLConfig(Validated):
    out_dir: str = "runs/rl-shapes"
    model: RLModelConfig = field(default_factory=RLModelConfig)
    data: RLDataConfig = field(default_factory=RLDataConfig)
    sample: RLSampleConfig = field(default_factory=RLSampleConfig)
    reward: RLRewardConfig = field(default_factory=RLRewardConfig)
    optim: RLOptimConfig = field(default_factory=RLOptimConfig)
    ptx: RLPtxConfig = field(default_factory=RLPtxConfig)
    backprop: RLBackpropConfig = field(default_factory=RLBackpropConfig)
    system: RLSystemConfig = field(default_factory=RLSystemConfig)
    log: RLLogConfig = field(default_factory=RLLogConfig)
    checkpoint: RLCheckpointConfig = field(default_factory=RLCheckpointConfig)

    def checks(self) -> list[tuple[bool, str, str]]:
        d, s, o = self.data, self.sample, self.optim
        backprop = o.objective == "backprop"
        table = BucketTable(d.bases, d.multiple).sizes() if d.bases and all(b > 0 for b in d.bases) else {}
        return [
            (self.model.lora_rank >= 0, "model.lora_rank", "0 (full fine-tuning) or a positive rank"),
            (0 < d.fraction <= 1, "data.fraction", "a fraction in (0, 1]"),
            (d.prompts_per_step >= 1, "data.prompts_per_step", "a positive integer"),
            (d.images_per_prompt >= (1 if backprop else 2), "data.images_per_prompt",
             "at least 1" if backprop else "at least 2 (advantages compare a group)"),
            (1 <= d.buckets_per_prompt <= d.images_per_prompt, "data.buckets_per_prompt",
             "between 1 and data.images_per_prompt"),
            (bool(d.bases) and all(b > 0 for b in d.bases), "data.bases", "positive sizes"),
            (all(isinstance(hw, list) and tuple(hw) in table for hw in d.sizes), "data.sizes",
             "[height, width] pairs of the bucket table (data.bases, data.multiple): "
             + ", ".join(f"[{h}, {w}]" for h, w in sorted(table))),
            (s.solver in SOLVERS, "sample.solver", " or ".join(SOLVERS)),
            (s.steps >= 1, "sample.steps", "a positive integer"),
            (s.batch_size >= 1, "sample.batch_size", "a positive integer"),
            (0 < s.timestep_fraction <= 1 and int(s.steps * s.timestep_fraction) >= 1, "sample.timestep_fraction",
             "a fraction in (0, 1] leaving at least one training noise level"),
            (s.train_levels >= 0, "sample.train_levels", "0 (every level) or a positive count"),
            (bool(self.reward.weights), "reward.weights", "at least one reward, e.g. {rubric: 1.0}"),
            (self.reward.shape_credit in SHAPE_CREDITS, "reward.shape_credit", " or ".join(SHAPE_CREDITS)),
            (o.objective in OBJECTIVES, "optim.objective", " or ".join(OBJECTIVES)),
            (self.backprop.margin_cap > 0, "backprop.margin_cap", "a positive number"),
            (self.backprop.colour_weight >= 0, "backprop.colour_weight", "a number >= 0 (0: shapes only)"),
            (0 < self.backprop.grad_below <= 1, "backprop.grad_below", "a noise level in (0, 1]"),
            (self.backprop.text_weight >= 0, "backprop.text_weight", "a number >= 0 (0: sign prompts left out)"),
            (0 < self.backprop.text_cap < 1, "backprop.text_cap", "a probability in (0, 1)"),
            (not backprop or (o.kl_guidance == 1 and not o.kl_classifier), "optim.kl_guidance",
             "1 and no optim.kl_classifier with optim.objective backprop (its pull is the reference's own velocity)"),
            (not backprop or s.classifier_scale == 0, "sample.classifier_scale",
             "0 with optim.objective backprop (the policy samples alone)"),
            (not backprop or self.ptx.weight == 0, "ptx.weight", "0 with optim.objective backprop"),
            (not backprop or self.model.lora_rank == 0, "model.lora_rank",
             "0 with optim.objective backprop (full fine-tuning)"),
            (o.steps >= 1, "optim.steps", "a positive integer"),
            (o.lr > 0, "optim.lr", "a positive number"),
            (len(o.betas) == 2, "optim.betas", "two numbers"),
            (o.train_batch_size >= 1, "optim.train_batch_size", "a positive integer"),
            (o.updates_per_step >= 1, "optim.updates_per_step", "a positive integer"),
            (o.nft_beta > 0, "optim.nft_beta", "a positive number"),
            (o.kl_weight >= 0, "optim.kl_weight", "a number >= 0"),
            (math.isfinite(o.kl_guidance) and o.kl_guidance >= 0, "optim.kl_guidance",
             "a CFG scale >= 0 (1: the reference's conditional velocity)"),
            (o.kl_guidance == 1 or o.kl_weight > 0, "optim.kl_guidance",
             "1 while optim.kl_weight is 0 (the guided reference only enters the KL term)"),
            (not o.kl_classifier or o.kl_weight > 0, "optim.kl_classifier",
             "empty while optim.kl_weight is 0 (the classifier's guidance only enters the KL term)"),
            (math.isfinite(o.kl_classifier_scale) and o.kl_classifier_scale >= 0, "optim.kl_classifier_scale",
             "a guidance scale >= 0"),
            (0 < o.kl_classifier_max_sigma < 1, "optim.kl_classifier_max_sigma", "a noise level in (0, 1)"),
            (math.isfinite(s.classifier_scale) and s.classifier_scale >= 0, "sample.classifier_scale",
             "a guidance scale >= 0 (0: the policy samples alone)"),
            (s.classifier_scale == 0 or bool(o.kl_classifier), "sample.classifier_scale",
             "0 unless optim.kl_classifier names the classifier to guide with"),
            (0 < s.classifier_max_sigma < 1, "sample.classifier_max_sigma", "a noise level in (0, 1)"),
            (not self.model.reference_from or self.model.lora_rank == 0, "model.reference_from",
             "empty with LoRA (model.lora_rank > 0: the reference is the base under the adapters)"),
            (not self.model.reference_from or o.kl_weight > 0, "model.reference_from",
             "empty while optim.kl_weight is 0 (the reference only enters the KL term)"),
            (o.adv_clip > 0, "optim.adv_clip", "a positive number"),
            (o.advantage_std in ADVANTAGE_SCALES, "optim.advantage_std", " or ".join(ADVANTAGE_SCALES)),
            (0 <= o.old_decay_cap < 1 and o.old_decay_rate >= 0, "optim.old_decay_cap",
             "0 <= cap < 1 (and a rate >= 0)"),
            (0 <= o.ema_decay < 1, "optim.ema_decay", "a decay in [0, 1)"),
            (self.ptx.weight >= 0, "ptx.weight", "a number >= 0 (0: no pretraining anchor)"),
            (self.ptx.source in SOURCES, "ptx.source", " or ".join(SOURCES)),
            (self.ptx.weight == 0 or self.ptx.source == "shapes" or bool(self.ptx.shards), "ptx.shards",
             "the pretraining shards (a folder or pattern) for ptx.source shards or stream"),
            (self.ptx.weight == 0 or self.ptx.source != "shapes" or self.ptx.items >= 1, "ptx.items",
             "a positive number of Shapes scenes"),
            (self.ptx.batch_size >= 1, "ptx.batch_size", "a positive integer"),
            (self.ptx.caption in ("short", "dense", "mixed"), "ptx.caption", "short, dense or mixed"),
            (0 <= self.ptx.dense_prob <= 1, "ptx.dense_prob", "a probability in [0, 1]"),
            (self.system.device in ("auto", "cpu", "cuda"), "system.device", "auto, cpu or cuda"),
            (self.system.precision in ("auto", "fp32", "bf16"), "system.precision", "auto, fp32 or bf16"),
            (self.system.fsdp in ("auto", True, False), "system.fsdp", "auto, true or false"),
            (self.system.reward_workers >= 1, "system.reward_workers", "a positive integer"),
            (self.checkpoint.every >= 1 and self.checkpoint.keep >= 1, "checkpoint.every",
             "positive every and keep"),
            (self.checkpoint.export_storage in STORAGES, "checkpoint.export_storage",
             ", ".join(STORAGES)),
        ]


def load_rl_config(path: str | Path, overrides: Iterable[Override] = ()) -> RLConfig:
    """A `lensgen rl` config file with `--set` overrides applied."""
    return load_typed_config(RLConfig, path, overrides)


def rl_config_to_dict(config: RLConfig) -> dict:
    return dataclasses.asdict(config)


__all__ = ["RLConfig", "load_rl_config", "rl_config_to_dict"]
