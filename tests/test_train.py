"""Pretraining end to end on CPU: resume equality, export to a generate-able folder, torchrun + FSDP2."""

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from lensgen import cli
from lensgen.train import checkpoint as ckpt
from lensgen.train.config import load_config
from lensgen.train.ema import EMA
from lensgen.train.parallel import DistInfo
from lensgen.train.trainer import Trainer

TINY = """
out_dir: {out}
model:
  preset: shapes-tiny
  overrides: {{num_layers: 1, num_attention_heads: 1}}
data: {{num_items: 256, bases: [32, 48, 64], caption: mixed}}
optim: {{steps: {steps}, batch_size: 4, warmup_steps: 2, lr: 1.0e-3, schedule: constant}}
log: {{val_every: 2, val_images_every: 0, tensorboard: false}}
checkpoint: {{every: 2}}
system: {{threads: 1}}
"""


def write_config(path: Path, out: Path, steps: int) -> Path:
    path.write_text(TINY.format(out=out, steps=steps))
    return path


def losses(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_resume_gives_the_same_losses_and_export_generates(tmp_path):
    straight = tmp_path / "straight"
    Trainer(load_config(write_config(tmp_path / "a.yaml", straight, 4), ["model.guidance=3"]), progress=False).run()
    split = tmp_path / "split"
    Trainer(load_config(write_config(tmp_path / "b.yaml", split, 2)), progress=False).run()
    with open(split / "metrics.jsonl", "a") as f:  # a step logged by a run killed after the checkpoint
        f.write(json.dumps({"step": 3, "loss": 99.0}) + "\n")
    Trainer(load_config(write_config(tmp_path / "b.yaml", split, 4)), resume=True, progress=False).run()
    a, b = losses(straight), losses(split)
    assert len(a) == 4 and len(b) == 4
    assert b == pytest.approx(a, rel=1e-6, abs=1e-7)
    state_a = json.loads((straight / "ranks" / "rank0.json").read_text())
    state_b = json.loads((split / "ranks" / "rank0.json").read_text())
    assert state_b["param_sq_sum"] == pytest.approx(state_a["param_sq_sum"], rel=1e-9)
    assert state_b["ema_sq_sum"] == pytest.approx(state_a["ema_sq_sum"], rel=1e-9)
    metrics = [json.loads(x) for x in (straight / "metrics.jsonl").read_text().splitlines()]
    assert "val_loss@0.5" in metrics[1] and 0 <= metrics[0]["padding_waste"] < 1
    # the export is a pipeline folder that `lensgen generate` loads
    out_png = tmp_path / "x.png"
    assert cli.main(["generate", "a red circle", "--model", str(straight / "final"), "--size", "48x48",
                     "--steps", "2", "-o", str(out_png), "-q"]) == 0
    assert out_png.stat().st_size > 0
    # the export samples with the noise-level shift it was trained with, at the config's CFG scale
    defaults = json.loads((straight / "final" / "model_index.json").read_text())["lensgen"]
    assert defaults["schedule"] == "train" and defaults["cfg"] == 3.0


@pytest.mark.slow
def test_torchrun_fsdp2_two_ranks_checkpoint_resume_agree(tmp_path):
    """Two gloo ranks with FSDP2, reading streamed shards (each rank its own) as lens-3.8b does."""
    out = tmp_path / "dist"
    shards = tmp_path / "shards"
    assert cli.main(["data", "shapes", "--n", "48", "--out", str(shards), "--shard-size", "12",
                     "--bases", "32,48,64", "--no-progress"]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                "-m", "lensgen.cli", "train", "--quiet", "--set", "system.fsdp=true",
                "--set", "data.source=stream", "--set", f"data.shards={shards}", "--set", "data.shuffle_buffer=4"]
    config = write_config(tmp_path / "d.yaml", out, 2)
    subprocess.run([*torchrun, "--config", str(config)], check=True, env=env, timeout=600)
    streams = [json.loads((out / "checkpoints" / "step-00000002" / f"rank{r}.json").read_text())["sampler"]
               for r in (0, 1)]
    assert streams[0]["buffer"] != streams[1]["buffer"]  # each rank's own position is checkpointed
    write_config(config, out, 4)
    subprocess.run([*torchrun, "--config", str(config), "--resume"], check=True, env=env, timeout=600)
    ranks = [json.loads((out / "ranks" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2] and [r["step"] for r in ranks] == [4, 4]
    assert ranks[0]["param_sq_sum"] == ranks[1]["param_sq_sum"]
    assert ranks[0]["ema_sq_sum"] == ranks[1]["ema_sq_sum"]
    straight = tmp_path / "straight"  # the same 4 steps unbroken: resuming lost nothing on either rank
    subprocess.run([*torchrun, "--config", str(write_config(tmp_path / "s.yaml", straight, 4))], check=True,
                   env=env, timeout=600)
    assert losses(out) == pytest.approx(losses(straight), rel=1e-5, abs=1e-6)
    assert (out / "final" / "transformer" / "diffusion_pytorch_model.safetensors").is_file()
    assert (out / "checkpoints" / "latest").read_text().strip() == "step-00000004"


@pytest.mark.parametrize("world_size", ["1", "2"])
def test_a_torchrun_rank_skips_the_interpreter_teardown_and_keeps_its_output_and_exit_code(world_size, tmp_path):
    """`python -m lensgen.cli` as a torchrun rank (WORLD_SIZE > 1) leaves with os._exit once `main` returns: torch's
    C++ threads could abort a finished rank's teardown, failing the run. Its output and exit code come through;
    a single process tears down as usual (the atexit line)."""
    script = ("import atexit, sys; atexit.register(lambda: print('teardown ran')); from lensgen.cli import run; "
              "sys.argv = ['lensgen'] + sys.argv[1:]; run()")
    env = {**os.environ, "WORLD_SIZE": world_size, "HF_HUB_OFFLINE": "1"}
    ok = subprocess.run([sys.executable, "-c", script, "reason", "three purple hexagons"], env=env,
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and "hexagon" in ok.stdout
    assert ("teardown ran" in ok.stdout) == (world_size == "1")
    bad = subprocess.run([sys.executable, "-c", script, "train", "--config", str(tmp_path / "missing.yaml")], env=env,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "missing.yaml" in bad.stderr


def test_shard_source_caption_mix_per_batch_and_text_cache(tmp_path):
    """Training from `lensgen data shapes` shards; per-batch caption draws; the text cache fills its folder."""
    import random

    shards = tmp_path / "shards"
    assert cli.main(["data", "shapes", "--n", "24", "--out", str(shards), "--shard-size", "12",
                     "--bases", "32,48,64", "--no-progress"]) == 0
    config = load_config(write_config(tmp_path / "s.yaml", tmp_path / "run", 2), [
        "data.source=shards", f"data.shards={shards}", "data.caption_mix=batch", "data.dense_prob=0.5",
        f"data.text_cache={tmp_path / 'text'}", "optim.caption_dropout=0", "log.val_every=0"])
    trainer = Trainer(config, progress=False)
    items = trainer.source.items
    assert len(items) == 24
    for i in range(len(items)):
        image, captions = items.load(i)
        bucket = trainer.table[items.bucket_of(i)]
        assert (image.height, image.width) == (bucket.height, bucket.width) and captions["dense"]
    kinds = set()
    for s in range(12):
        batch = trainer._load_batch(next(trainer.batches), random.Random(s))
        words = [len(p.split()) for p in batch.prompts]
        assert max(words) < 30 or min(words) > 30, words  # all short or all dense, never mixed in a batch
        kinds.add(max(words) < 30)
    assert kinds == {True, False}
    trainer.run()
    assert trainer.text.misses > 0 and any((tmp_path / "text").rglob("*.safetensors"))
    assert len(losses(tmp_path / "run")) == 2


@pytest.mark.slow
def test_streamed_shards_resume_exactly_with_prefetch(tmp_path):
    """data.source: stream (Lens-scale shard sets): the stream's position rides in the checkpoint, and
    the checkpoint holds the position of the last batch trained on, not of the one prefetched."""
    shards = tmp_path / "shards"
    assert cli.main(["data", "shapes", "--n", "40", "--out", str(shards), "--shard-size", "10",
                     "--bases", "32,48,64", "--no-progress"]) == 0
    stream = ["data.source=stream", f"data.shards={shards}", "data.shuffle_buffer=6", "data.sampler=class"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    Trainer(load_config(write_config(tmp_path / "a.yaml", straight, 4), stream), progress=False).run()
    # the split run prepares batches in a background thread: the data, so the losses, must not change
    prefetched = [*stream, "system.prefetch=true"]
    Trainer(load_config(write_config(tmp_path / "b.yaml", split, 2), prefetched), progress=False).run()
    meta = json.loads((split / "checkpoints" / "step-00000002" / "meta.json").read_text())
    assert meta["sampler"]["buffer"] and meta["sampler"]["shard_pos"] >= 0
    Trainer(load_config(write_config(tmp_path / "b.yaml", split, 4), prefetched), resume=True,
            progress=False).run()
    assert losses(split) == pytest.approx(losses(straight), rel=1e-6, abs=1e-7)
    assert (straight / "final" / "model_index.json").is_file()


def test_init_from_starts_the_model_and_ema_at_a_pipeline_folders_weights(tmp_path):
    """`model.init_from`: a new run goes on from exported (here int8) weights, with the folder's architecture."""
    import torch

    from lensgen.models.transformer import LensTransformer2DModel
    from lensgen.train.trainer import transformer_config

    cfg = load_config(write_config(tmp_path / "a.yaml", tmp_path / "run", 1))
    torch.manual_seed(1)
    source = LensTransformer2DModel(replace(transformer_config(cfg.model), num_layers=2))  # the config says 1
    source.save_pretrained(tmp_path / "init" / "transformer", storage="int8")
    cfg = load_config(tmp_path / "a.yaml", [f"model.init_from={tmp_path / 'init'}"])
    trainer = Trainer(cfg, progress=False)
    assert trainer.model.config.num_layers == 2
    loaded = LensTransformer2DModel.from_pretrained(tmp_path / "init" / "transformer").state_dict()
    originals = source.state_dict()
    for name, p in trainer.model.named_parameters():
        assert torch.equal(p.detach(), loaded[name]), name
        assert torch.equal(trainer.ema.shadow[name], loaded[name]), name
        original = originals[name]
        assert torch.allclose(p.detach(), original, atol=float(original.abs().max()) / 100 + 1e-6), name
    trainer.run()
    assert len(losses(tmp_path / "run")) == 1


def test_resume_finds_the_newest_complete_checkpoint_when_latest_is_gone(tmp_path):
    """`latest` names a checkpoint removed by hand (or is missing): resuming takes the newest complete one
    instead of silently starting again from step 0; a half-written .tmp never counts."""
    model = torch.nn.Linear(3, 2)
    optimizer, ema = torch.optim.AdamW(model.parameters()), EMA(model, 0.9)
    for step in (5, 10, 15):
        ckpt.save_checkpoint(tmp_path, step, model, optimizer, ema, {}, DistInfo(), keep=3)
    assert ckpt.latest_checkpoint(tmp_path).name == "step-00000015"
    (tmp_path / "step-00000020.tmp").mkdir()  # a save that crashed
    shutil.rmtree(tmp_path / "step-00000015")
    assert ckpt.latest_checkpoint(tmp_path).name == "step-00000010"
    (tmp_path / "latest").unlink()
    assert ckpt.latest_checkpoint(tmp_path).name == "step-00000010"
    assert ckpt.latest_checkpoint(tmp_path / "nothing-here") is None
