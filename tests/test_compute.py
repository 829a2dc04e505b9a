"""Compute accounting: the FLOP formula against torch's FLOP counter on a real step, MFU, the paper's 19.3 %,
and MFU in the training log."""

import json
from dataclasses import replace

import pytest
import torch

from lensgen.compute import (
    StepShape,
    attention_flops,
    device_peak_tflops,
    flop_counter,
    forward_flops,
    mfu,
    relative_compute,
    training_flops,
)
from lensgen.errors import UserError
from lensgen.models.transformer import LensTransformer2DModel, preset


def test_flop_formula_equals_the_counted_flops_of_a_real_training_step():
    torch.manual_seed(0)
    cfg = replace(preset("shapes-tiny"), num_layers=2)
    model = LensTransformer2DModel(cfg)
    shape = StepShape(batch=3, image_tokens=10 * 6, text_tokens=9)
    x = torch.randn(3, 60, cfg.in_channels)
    text = torch.randn(3, 9, cfg.num_text_layers, cfg.enc_hidden_dim)
    with flop_counter() as counter:
        out = model(x, text, torch.rand(3), (10, 6))
    assert counter.get_total_flops() == forward_flops(cfg, shape)
    with flop_counter() as counter:
        out.square().mean().backward()
    # the counter also counts the flash backward's recomputed QK^T (implementation work, not model work)
    assert forward_flops(cfg, shape) + counter.get_total_flops() == (
        training_flops(cfg, shape) + attention_flops(cfg, shape) // 2)


def test_lens_3_8b_flops_per_image_at_1024px():
    """6 x (the weights one token passes through: one stream of each block) x tokens + 3 x attention, to
    within the small layers (embeddings, modulation on one row per sample) and the skipped gradients."""
    cfg = preset("lens-3.8b")
    with torch.device("meta"):
        model = LensTransformer2DModel(cfg)
    block = model.transformer_blocks[0]
    per_token = cfg.num_layers * sum(m.weight.numel() for m in (block.attn.img_qkv, block.attn.to_out[0],
                                                                  block.img_mlp.w1, block.img_mlp.w2, block.img_mlp.w3))
    shape = StepShape(1, 64 * 64, 512)
    expected = 6 * per_token * (64 * 64 + 512) + 3 * attention_flops(cfg, shape)
    assert training_flops(cfg, shape) == pytest.approx(expected, rel=0.01)
    assert 5.5e13 < training_flops(cfg, shape) < 5.8e13  # ~56 TFLOP per 1024 px image


def test_paper_compute_ratio_and_mfu():
    # Lens: 192K A100-hours vs Z-Image's 314K H800-hours, weighted by peak dense bf16 rates
    ratio = relative_compute(192e3, "a100", 314e3, "H800")
    assert round(100 * ratio, 1) == 19.3
    assert ratio == pytest.approx(192e3 * 312 / (314e3 * 989))
    # 8 GPUs doing 4 PFLOP in 1 s at 989 TFLOP/s peak each
    assert mfu(4e15, 1.0, "h100", devices=8) == pytest.approx(4e15 / (8 * 989e12))
    assert device_peak_tflops("250") == 250.0
    with pytest.raises(UserError, match="unknown device"):
        device_peak_tflops("tpu-v9")


def test_training_log_has_model_flops_and_mfu(tmp_path):
    from lensgen.train.config import load_config
    from lensgen.train.trainer import Trainer

    config = tmp_path / "c.yaml"
    config.write_text(f"""
out_dir: {tmp_path / 'run'}
model: {{preset: shapes-tiny, overrides: {{num_layers: 1, num_attention_heads: 1}}}}
data: {{num_items: 64, bases: [32], caption: short}}
optim: {{steps: 2, batch_size: 2, warmup_steps: 1}}
log: {{val_every: 0, val_images_every: 0, tensorboard: false}}
system: {{threads: 1, peak_tflops: 0.15}}
""")
    trainer = Trainer(load_config(config), progress=False)
    trainer.run()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    least = training_flops(trainer.model.config, StepShape(2, 4 * 4, 1))  # 32 px = 4 x 4 tokens, >= 1 text token
    for row in rows:
        assert row["tflop"] * 1e12 >= least
        assert row["mfu"] == pytest.approx(row["tflop"] * 1e12 / (row["seconds"] * 0.15e12))
        assert row["tflops_per_gpu"] == pytest.approx(row["tflop"] / row["seconds"])
    with pytest.raises(UserError, match="system.peak_tflops"):
        load_config(config, ["system.peak_tflops=fast"])
