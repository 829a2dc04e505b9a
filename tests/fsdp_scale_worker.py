"""Run by tests/test_scale.py under torchrun (two gloo ranks): meta-device build, shard-by-shard init and
load, and the real memory of a training step. Writes OUT/rank{r}.json. Not a test module itself.

usage: torchrun --nproc_per_node 2 tests/fsdp_scale_worker.py CONFIG.yaml OUT RESOLUTION BATCH TEXT_TOKENS
"""

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from lensgen.models.transformer import LensTransformer2DModel
from lensgen.train.config import load_config
from lensgen.train.ema import EMA
from lensgen.train.materialize import init_shards, load_shards, meta_transformer
from lensgen.train.parallel import DistInfo
from lensgen.train.planner import StepInputs, create_optimizer_state, measure_step, train_step
from lensgen.train.trainer import build_optimizer, parallelize, transformer_config


def sharded(config, system, info):
    model = meta_transformer(config)
    parallelize(model, system, info, bf16=False)
    model.to_empty(device="cpu")
    return model


def same_as(model, reference) -> bool:
    state = reference.state_dict()
    return all(torch.equal(p.full_tensor(), state[name]) for name, p in model.named_parameters())


def main() -> None:
    config_path, out = sys.argv[1], Path(sys.argv[2])
    resolution, batch, text_tokens = (int(v) for v in sys.argv[3:6])
    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    rank, world = dist.get_rank(), dist.get_world_size()
    info = DistInfo(rank=rank, world_size=world)
    cfg = load_config(config_path, ["system.fsdp=true"])
    mc = transformer_config(cfg.model)
    report = {"rank": rank, "world_size": world}

    # meta -> shard -> init, against a plain build from the same seed; both leave the RNG in the same state
    torch.manual_seed(7)
    plain = LensTransformer2DModel(mc)
    after_plain = torch.rand(4)
    torch.manual_seed(7)
    model = sharded(mc, cfg.system, info)
    init_shards(model)
    report["init_identical"] = same_as(model, plain)
    report["rng_in_step"] = torch.equal(torch.rand(4), after_plain)
    report["local_fraction"] = (sum(p.to_local().numel() for p in model.parameters())
                                / sum(p.numel() for p in model.parameters()))

    # an int8 export, loaded shard by shard, equals from_pretrained
    if rank == 0:
        plain.save_pretrained(out / "export", storage="int8")
    dist.barrier()
    loaded = sharded(mc, cfg.system, info)
    load_shards(loaded, out / "export")
    report["load_identical"] = same_as(loaded, LensTransformer2DModel.from_pretrained(out / "export"))

    # the real memory of a step after a warm-up step, with and without activation checkpointing
    side = resolution // cfg.data.multiple
    for ckpt in (False, True):
        torch.manual_seed(7)
        system = type(cfg.system)(**{**vars(cfg.system), "activation_checkpointing": ckpt})
        net = sharded(mc, system, info)
        init_shards(net)
        optimizer = build_optimizer(net, cfg.optim, cuda=False)
        create_optimizer_state(net, optimizer)
        ema = EMA(net, cfg.optim.ema_decay)
        torch.manual_seed(100 + rank)
        inputs = StepInputs.random(batch, (side, side), mc.in_channels, text_tokens, mc.num_text_layers,
                                   mc.enc_hidden_dim, torch.float32)
        train_step(net, optimizer, ema, inputs, cfg.optim.grad_clip)
        memory, total = measure_step(net, optimizer, ema, inputs, cfg.optim.grad_clip)
        report[f"measured_ckpt_{int(ckpt)}"] = {"total": total, **vars(memory)}
    # the frozen text encoder sharded across the ranks gives the features a full copy gives; a rank whose
    # prompts are all empty still joins the other's forward (it is a collective)
    from lensgen.models.text_encoder import build_text_encoder
    from lensgen.train.parallel import node_mesh
    from lensgen.train.trainer import Trainer, shard_text_encoder

    prompts = ["a red circle above two blue squares", "the word LENS"] if rank else ["", ""]
    full = build_text_encoder({"backend": "minilm"}).encode(prompts)
    encoder = build_text_encoder({"backend": "minilm"})
    shard_text_encoder(encoder, node_mesh(info))
    shards = encoder.encode(prompts)
    report["text_encoder_local_fraction"] = (sum(p.to_local().numel() for p in encoder.parameters())
                                             / sum(p.numel() for p in encoder.parameters()))
    report["text_encoder_identical"] = (torch.equal(shards.mask, full.mask)
                                        and torch.allclose(shards.features, full.features, atol=1e-5))
    # and the trainer trains with it (caption dropout makes all-empty batches likely)
    trainer = Trainer(load_config(config_path, [
        "system.fsdp=true", "system.text_encoder_fsdp=node", "system.prefetch=false", f"out_dir={out / 'train'}",
        "log.val_every=0", "log.val_images_every=0", "log.tensorboard=false", "optim.batch_size=2",
        "optim.caption_dropout=0.5", "data.num_items=64"]), progress=False)
    report["sharded_text_losses"] = [trainer.train_step()["loss"] for _ in range(3)]
    (out / f"rank{rank}.json").write_text(json.dumps(report))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
