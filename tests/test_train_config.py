"""Config files fail before any work starts, naming the bad field."""

import re
from pathlib import Path

import pytest

from lensgen.errors import UserError
from lensgen.train.config import load_config

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def test_lens_config_is_the_recipe():
    """configs/lens-3.8b.yaml: the released architecture, 27 buckets at 512/768/1024 px on 16 px tokens,
    GPT-OSS layers 5/11/17/23 with the 97-token prefix, sharded and streamed."""
    from lensgen.data.buckets import BucketTable
    from lensgen.models.transformer import preset
    from lensgen.train.trainer import transformer_config

    cfg = load_config(CONFIGS / "lens-3.8b.yaml")
    assert transformer_config(cfg.model) == preset("lens-3.8b")
    table = BucketTable(cfg.data.bases, cfg.data.multiple)
    assert len(table) == 27 and table.bases == (512, 768, 1024) and cfg.data.multiple == 16
    te = cfg.model.text_encoder
    assert te["backend"] == "gpt-oss" and te["layers"] == [5, 11, 17, 23] and te["prefix_tokens"] == 97
    assert cfg.model.codec["backend"] == "flux2-vae" and cfg.data.source == "stream" and cfg.system.fsdp is True
    assert cfg.system.text_encoder_fsdp == "node"  # what `lensgen plan` says fits (docs/scaling.md)


@pytest.mark.parametrize("text,field", [
    ("optim:\n  lr: fast\n", "optim.lr"),
    ("optim:\n  lrr: 0.1\n", "optim: unknown field(s) lrr"),
    ("data:\n  source: web\n", "data.source"),
    ("data:\n  source: shards\n", "data.shards"),
    ("data:\n  source: stream\n", "data.shards"),
    ("data:\n  source: stream\n  shards: /d\n  shuffle_buffer: -1\n", "data.shuffle_buffer"),
    ("model:\n  guidance: 0.5\n", "model.guidance"),
    ("system:\n  compile: maybe\n", "system.compile"),
    ("optim:\n  betas: [0.9]\n", "optim.betas"),
    ("optim:\n  steps: 1.5\n", "optim.steps"),
    ("system:\n  peak_tflops: fast\n", "system.peak_tflops"),
    ("system:\n  text_encoder_fsdp: yes-please\n", "system.text_encoder_fsdp"),
    # a sharded text encoder's forwards are collectives: what would make ranks skip one or run one alone
    ("system:\n  text_encoder_fsdp: node\n  prefetch: false\nlog:\n  val_images_every: 0\ndata:\n  text_cache: ''\n",
     "data.text_cache"),
    ("system:\n  text_encoder_fsdp: node\n  prefetch: false\n", "log.val_images_every"),
    ("system:\n  text_encoder_fsdp: all\nlog:\n  val_images_every: 0\n", "system.prefetch"),
])
def test_bad_fields_are_named(tmp_path, text, field):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match=re.escape(field)):
        load_config(path)


def test_overrides_and_scientific_notation(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: 1e-3\n")
    cfg = load_config(path, ["optim.steps=7", "data.bases=[32, 48, 64]"])
    assert cfg.optim.lr == 1e-3 and cfg.optim.steps == 7 and cfg.data.bases == [32, 48, 64]
    with pytest.raises(UserError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_overrides_fill_empty_sections_and_refuse_non_sections(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\nlog:\n")
    assert load_config(path, ["optim.steps=3", "system.threads=1"]).optim.steps == 3
    with pytest.raises(UserError, match="out_dir"):
        load_config(path, ["out_dir.x=1"])


def test_shipped_config_describes_the_shipped_model(monkeypatch):
    """configs/shapes-tiny.yaml builds the shipped models' transformer shape (the default's adds the sign stage's
    layout input) and loads their very codec."""
    import json
    from dataclasses import asdict

    import torch

    from lensgen.inference.pipeline import DEFAULT_MODEL_DIR
    from lensgen.models.vae import build_codec, load_codec
    from lensgen.train.trainer import transformer_config

    monkeypatch.chdir(CONFIGS.parent.parent)  # the config works from any folder
    cfg = load_config(CONFIGS / "shapes-tiny.yaml")
    shipped = json.loads((DEFAULT_MODEL_DIR / "transformer" / "config.json").read_text())
    pretrained = json.loads((DEFAULT_MODEL_DIR.parent / "shapes-tiny-base" / "transformer" / "config.json").read_text())
    built = asdict(transformer_config(cfg.model))
    assert {k: pretrained.get(k, 0) for k in built} == {k: list(v) if isinstance(v, tuple) else v
                                                        for k, v in built.items()}
    assert {**shipped, "layout_channels": 0} == {**pretrained, "layout_channels": 0} and shipped["layout_channels"] == 64
    codec, shipped_codec = build_codec(cfg.model.codec), load_codec(DEFAULT_MODEL_DIR / "vae")
    assert (codec.spatial_factor, codec.token_channels) == (shipped_codec.spatial_factor, shipped_codec.token_channels)
    for a, b in zip(codec.state_dict().values(), shipped_codec.state_dict().values()):
        assert torch.equal(a, b)
