"""The pretraining anchor: the flow-matching loss on pretraining data beside the NFT loss (InstructGPT's PPO-ptx).

RL on the small Shapes model trades tasks: what a step's prompts reward improves while what they do not
drifts (docs/rl-shapes-measurements.md). With `ptx.weight > 0` every optimiser step also takes the
rectified-flow loss of pretraining on one batch of its data (the Shapes world, or shards), so the data, not
only the KL pull, holds what the reward does not pay for. The anchor's position in the data is in the
checkpoint, so a resumed run draws the same batches.
"""

from __future__ import annotations

import random

import torch

from lensgen.data.buckets import BucketTable
from lensgen.data.sources import build_batch_source
from lensgen.rl.config import RLPtxConfig
from lensgen.train.batch import load_batch
from lensgen.train.objective import SigmaSampling, masked_mse, noisy_input
from lensgen.train.parallel import DistInfo


class PretrainAnchor:
    """Batches of pretraining data and their flow-matching loss through the policy."""

    def __init__(self, cfg: RLPtxConfig, table: BucketTable, codec, text_encoder, info: DistInfo, seed: int):
        self.cfg, self.codec, self.text_encoder, self.info = cfg, codec, text_encoder, info
        # one bucket per batch: no padded tokens (a CPU pays for each in full)
        self.source = build_batch_source(cfg.source, table, cfg.batch_size, codec.spatial_factor, seed=seed,
                                         rank=info.rank, world_size=info.world_size, mode="grouped",
                                         shards=cfg.shards or None, num_items=cfg.items)
        self.sigmas = SigmaSampling()  # pretraining's: logit-normal, shifted by the token count
        self._batches = None

    def state_dict(self) -> dict:
        return self.source.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.source.load_state_dict(state)
        self._batches = None

    def loss(self, policy, key: tuple, autocast, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """The flow-matching loss of `policy` on the next batch; `key` seeds the captions, sigma and noise."""
        if self._batches is None:
            self._batches = iter(self.source)
        keys = next(self._batches)
        rng = random.Random(f"ptx-{key}-{self.info.rank}")
        batch = load_batch(self.source, keys, self.codec, rng, caption=self.cfg.caption,
                           dense_prob=self.cfg.dense_prob)
        text = self.text_encoder.encode(batch.prompts)
        gen = torch.Generator().manual_seed(rng.getrandbits(63))
        sigma = self.sigmas.sample(torch.tensor([h * w for h, w in batch.sizes]), gen)
        noise = torch.randn(batch.tokens.shape, generator=gen)
        x_t, target = noisy_input(batch.tokens.to(device), noise.to(device), sigma.to(device))
        features = text.features.to(device, dtype)
        with autocast:
            v = policy(x_t, features, sigma.to(device), batch.sizes, text.mask.to(device))
        mask = batch.token_mask.to(device) if batch.token_mask is not None else None
        return masked_mse(v.float(), target, mask)


__all__ = ["PretrainAnchor"]
