"""The Shapes VAE trainer (`lensgen train-vae`): a flux2-vae codec folder, exact latent statistics, exact resume."""

import json
from dataclasses import asdict

import pytest
import torch

from lensgen.cli import main
from lensgen.data.buckets import BucketTable
from lensgen.errors import UserError
from lensgen.eval import shapes as se
from lensgen.models.vae import Flux2VAECodec, PixelCodec, load_codec, patchify
from lensgen.train.shapes_vae import VAETrainConfig, VAETrainer, run, scene_batch

TINY_VAE = {"down_block_types": ["DownEncoderBlock2D"] * 3, "up_block_types": ["UpDecoderBlock2D"] * 3,
            "block_out_channels": [8, 16, 16], "layers_per_block": 1, "latent_channels": 4, "norm_num_groups": 8,
            "sample_size": 32, "mid_block_add_attention": False, "patch_size": [2, 2]}


def tiny(out, **kw) -> VAETrainConfig:
    base = dict(out_dir=str(out), steps=4, batch_size=3, lr=3e-3, warmup_steps=1, bases=[32], multiple=8,
                checkpoint_every=2, stats_images=9, eval_images=4, vae=dict(TINY_VAE))
    return VAETrainConfig(**{**base, **kw})


def test_train_vae_writes_a_flux2_codec_with_normalised_tokens(tmp_path):
    cfg = tiny(tmp_path / "vae")
    summary = run(cfg, progress=False)
    codec = load_codec(summary["final"])
    assert isinstance(codec, Flux2VAECodec)
    assert (codec.spatial_factor, codec.token_channels) == (8, 16)
    # the BatchNorm statistics are those of the stats scenes' latents: their tokens are standardised (up to
    # the VAE's batch_norm_eps, which the codec adds to the variance as FLUX.2 does)
    tokens = []
    for k, bucket in enumerate(BucketTable(cfg.bases, cfg.multiple)):
        images = scene_batch([(cfg.seed, 130363, k, 0)], bucket.height, bucket.width)
        tokens.append(codec.encode(images).transpose(0, 1).flatten(1))
    tokens = torch.cat(tokens, 1).double()
    assert tokens.mean(1).abs().max() < 1e-4
    var = codec.vae.bn.running_var.double()
    assert torch.allclose(tokens.var(1, unbiased=False), var / (var + codec.vae.config.batch_norm_eps), atol=1e-4)
    # decode inverts the normalisation before the decoder
    z = codec.vae.encode(images).latent_dist.mode()
    assert torch.allclose(codec.normalize(patchify(z, 2)), codec.encode(images), atol=1e-6)
    rec = summary["reconstruction"]
    assert rec["images"] == 4 and 0 <= rec["judge_agreement"] <= 1 and rec["psnr_db"] > 0
    saved = json.loads((tmp_path / "vae" / "summary.json").read_text())
    assert saved["steps"] == 4 and len((tmp_path / "vae" / "metrics.jsonl").read_text().splitlines()) == 4


def test_resume_continues_exactly(tmp_path):
    straight = VAETrainer(tiny(tmp_path / "a"), progress=False)
    straight.train()
    half = VAETrainer(tiny(tmp_path / "b", steps=2), progress=False)
    half.train()
    # a checkpoint from before the decoder-distillation fields resumes as one with their defaults
    state = torch.load(half.ckpt, weights_only=False)
    del state["config"]["teacher"], state["config"]["decoder_channels"]
    torch.save(state, half.ckpt)
    resumed = VAETrainer(tiny(tmp_path / "b"), resume=True, progress=False)
    assert resumed.step == 2
    log = resumed.train()
    assert [r["step"] for r in log] == [3, 4]
    for (name, a), b in zip(straight.vae.state_dict().items(), resumed.vae.state_dict().values()):
        assert torch.equal(a, b), name
    with pytest.raises(UserError, match=r"other settings than these \(lr\)"):
        VAETrainer(tiny(tmp_path / "b", lr=1e-2), resume=True)
    # a run killed after its last checkpoint logged steps 5-6; resuming drops them, a fresh run starts anew
    metrics = tmp_path / "b" / "metrics.jsonl"
    metrics.write_text(metrics.read_text() + '{"step": 5}\n{"step": 6}\n')
    VAETrainer(tiny(tmp_path / "b", eval_images=2), resume=True)
    assert [json.loads(ln)["step"] for ln in metrics.read_text().splitlines()] == [1, 2, 3, 4]
    VAETrainer(tiny(tmp_path / "b"))
    assert metrics.read_text() == ""


def test_training_reduces_reconstruction_loss(tmp_path):
    log = VAETrainer(tiny(tmp_path / "v", steps=40, checkpoint_every=40, warmup_steps=5), progress=False).train()
    first = sum(r["l1"] for r in log[:5]) / 5
    last = sum(r["l1"] for r in log[-5:]) / 5
    assert last < 0.7 * first


def test_bad_settings_name_the_field(tmp_path, capsys):
    with pytest.raises(UserError, match="batch_size"):
        VAETrainer(tiny(tmp_path, batch_size=0))
    with pytest.raises(UserError, match="bases"):
        VAETrainer(tiny(tmp_path, bases=[30]))
    with pytest.raises(UserError, match="AutoencoderKLFlux2"):
        VAETrainer(tiny(tmp_path, vae={**TINY_VAE, "no_such_field": 1}))
    assert main(["train-vae", "--out-dir", str(tmp_path), "--set", "learning_rate=1"]) == 2
    assert "learning_rate" in capsys.readouterr().err


def test_codec_round_trip_ceiling(tmp_path, capsys):
    from lensgen.shapes.evalset import load_prompts

    specs = load_prompts(["single_object"], limit=3)
    truth = se.ground_truth_generator(specs, 64, 64)
    prompts, seeds = [s.prompt for s in specs], [0, 1, 2]
    # the pixel codec is lossless: the round trip gives back the very images
    for a, b in zip(truth(prompts, seeds), se.codec_round_trip(truth, PixelCodec(8))(prompts, seeds)):
        assert a.tobytes() == b.tobytes()
    # --codec is the ground truth's option only
    PixelCodec(8).save_pretrained(tmp_path)
    assert main(["eval", "shapes", "--noise", "--codec", str(tmp_path), "--limit", "1"]) == 2
    assert "--ground-truth" in capsys.readouterr().err
    assert main(["eval", "shapes", "--ground-truth", "--codec", str(tmp_path), "--tasks", "single_object",
                 "--limit", "2", "--n-per-prompt", "1", "--no-progress"]) == 0
    assert "through the codec" in capsys.readouterr().out


def distil(out, teacher, **kw) -> VAETrainConfig:
    return tiny(out, teacher=str(teacher), **{"decoder_channels": [8, 8, 8], **kw})


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory):
    """A tiny trained VAE's codec folder: the teacher whose decoder is distilled."""
    return run(tiny(tmp_path_factory.mktemp("teacher") / "vae", steps=6), progress=False)["final"]


def test_a_distilled_decoder_keeps_the_teachers_tokens_and_learns_its_decoder(tmp_path, tiny_teacher, capsys):
    import yaml

    teacher = load_codec(tiny_teacher)
    config = tmp_path / "light.yaml"
    config.write_text(yaml.safe_dump(asdict(distil(tmp_path / "light", tiny_teacher, steps=40, checkpoint_every=40,
                                                   warmup_steps=5))))
    assert main(["train-vae", "--config", str(config), "--quiet"]) == 0
    assert "against the teacher's decoder on its tokens: PSNR" in capsys.readouterr().out
    summary = json.loads((tmp_path / "light" / "summary.json").read_text())
    light = load_codec(summary["final"])
    assert list(light.vae.config.decoder_block_out_channels) == [8, 8, 8]
    assert sum(p.numel() for p in light.vae.decoder.parameters()) < \
        0.6 * sum(p.numel() for p in teacher.vae.decoder.parameters())
    # the encoder, quant conv and latent statistics are the teacher's, untouched: the very same tokens
    for name, value in teacher.vae.state_dict().items():
        if not name.startswith(("decoder.", "post_quant_conv.")):
            assert torch.equal(value, light.vae.state_dict()[name]), name
    images = scene_batch([(5, 1), (5, 2)], 32, 32)
    assert torch.equal(light.encode(images), teacher.encode(images))
    assert summary["reconstruction"]["teacher"]["max_token_difference"] == 0
    # the new decoder learnt to reproduce the teacher's: its L1 to the teacher's output fell
    log = [json.loads(ln) for ln in (tmp_path / "light" / "metrics.jsonl").read_text().splitlines()]
    assert sum(r["l1"] for r in log[-5:]) < 0.7 * sum(r["l1"] for r in log[:5])


def test_a_distilled_decoder_resumes_exactly_and_names_bad_settings(tmp_path, tiny_teacher):
    from lensgen.train.decoder_distill import DecoderDistiller

    straight = DecoderDistiller(distil(tmp_path / "a", tiny_teacher), progress=False)
    straight.train()
    DecoderDistiller(distil(tmp_path / "b", tiny_teacher, steps=2), progress=False).train()
    resumed = DecoderDistiller(distil(tmp_path / "b", tiny_teacher), resume=True, progress=False)
    assert resumed.step == 2
    resumed.train()
    for (name, a), b in zip(straight.vae.state_dict().items(), resumed.vae.state_dict().values()):
        assert torch.equal(a, b), name
    with pytest.raises(UserError, match=r"decoder_channels \[8, 8\] must be 3 numbers"):
        DecoderDistiller(distil(tmp_path / "c", tiny_teacher, decoder_channels=[8, 8]))
    with pytest.raises(UserError, match="multiple of its norm_num_groups"):
        DecoderDistiller(distil(tmp_path / "c", tiny_teacher, decoder_channels=[8, 12, 8]))
    with pytest.raises(UserError, match="teacher"):
        VAETrainer(tiny(tmp_path / "c", decoder_channels=[8, 8, 8]))
    with pytest.raises(UserError, match="distils a decoder"):
        run(distil(tmp_path / "c", tiny_teacher))
    PixelCodec(8).save_pretrained(tmp_path / "pixel")
    with pytest.raises(UserError, match="only be distilled for a FLUX.2 VAE"):
        DecoderDistiller(distil(tmp_path / "c", tmp_path / "pixel"))


SHIPPED_VAE = "src/lensgen/assets/shapes-tiny-base/vae"


def test_a_decoder_learns_the_latents_a_model_samples(tmp_path, monkeypatch):
    """latent_model: part of each batch is latents the Turbo model samples (kept in OUT/latent_pool), decoded by
    the teacher and the new decoder alike; decoder_init starts from an earlier distilled decoder."""
    from lensgen.inference.pipeline import LensPipeline
    from lensgen.train import decoder_distill
    from lensgen.train.decoder_distill import DecoderDistiller

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a photo of a red circle\ntwo blue squares\na green star above a yellow triangle\n")
    first = run(tiny(tmp_path / "first", teacher=SHIPPED_VAE, decoder_channels=[16, 16, 16], steps=2),
                trainer_class=DecoderDistiller, progress=False)["final"]
    sampled = dict(teacher=SHIPPED_VAE, decoder_channels=[16, 16, 16], decoder_init=str(first),
                   latent_model="shapes-tiny-turbo", latent_prompts=str(prompts), latent_count=6,
                   latent_fraction=0.34)
    trainer = DecoderDistiller(tiny(tmp_path / "light", **sampled), progress=False)
    # the decoder starts as decoder_init's; everything else is the teacher's
    started = load_codec(first).vae.state_dict()
    for name, value in trainer.vae.state_dict().items():
        assert torch.equal(value, started[name]), name
    # the pool: the model's own samples at its defaults, one of the file's prompts each, noise seed = index
    pipe = LensPipeline.from_pretrained("shapes-tiny-turbo")
    assert trainer.pool.shape == (6, 16, 8, 8)
    lines = prompts.read_text().splitlines()
    assert any(torch.allclose(trainer.pool[2:3], pipe(p, seed=2, output_type="latent"), atol=1e-4) for p in lines)
    # a batch of 3: one latent from the pool, two scenes; both parts are in the loss
    images, tokens = trainer.batch(0)
    assert images.shape[0] == 2 and tokens.shape == (1, 16, 8, 8)
    assert any(torch.equal(tokens[0], z) for z in trainer.pool)
    z = trainer.teacher.vae_latents(tokens)
    torch.testing.assert_close(trainer.teacher_vae.decode(z).sample.clamp(-1, 1), trainer.teacher.decode(tokens))
    trainer.train()
    record = json.loads((tmp_path / "light" / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"l1", "l1_sampled", "mse_sampled"} <= set(record)
    # the pool is read back, not sampled again, while its settings hold, and sampled anew when they change
    monkeypatch.setattr(decoder_distill.LatentSampler, "sample", lambda *a, **k: pytest.fail("sampled again"))
    again = DecoderDistiller(tiny(tmp_path / "light", **sampled), progress=False)
    torch.testing.assert_close(again.pool, trainer.pool, rtol=0, atol=0)
    monkeypatch.undo()
    assert DecoderDistiller(tiny(tmp_path / "light", **{**sampled, "latent_count": 4}), progress=False).pool.shape[0] == 4
    # a resumed run continues exactly
    half = DecoderDistiller(tiny(tmp_path / "half", **sampled, steps=2), progress=False)
    half.train()
    resumed = DecoderDistiller(tiny(tmp_path / "half", **sampled), resume=True, progress=False)
    torch.testing.assert_close(resumed.pool, trainer.pool, rtol=0, atol=0)
    resumed.train()
    for (name, a), b in zip(trainer.vae.state_dict().items(), resumed.vae.state_dict().values()):
        assert torch.equal(a, b), name
    # a whole batch of sampled latents; the report adds the agreement on fresh samples
    summary = run(tiny(tmp_path / "all", **{**sampled, "latent_fraction": 1.0}, eval_images=2),
                  trainer_class=DecoderDistiller, progress=False)
    assert summary["reconstruction"]["sampled"]["images"] == 2
    assert 0 <= summary["reconstruction"]["sampled"]["judge_agreement"] <= 1


def test_sampled_latent_settings_are_checked(tmp_path, tiny_teacher):
    from lensgen.data.rl_prompts.config import load_rl_prompts_config
    from lensgen.data.rl_prompts.grammar import write_shapes_prompts
    from lensgen.train.decoder_distill import DecoderDistiller, read_prompt_texts

    with pytest.raises(UserError, match="latent_prompts: expected a prompts file"):
        distil(tmp_path / "c", tiny_teacher, latent_model="shapes-tiny-turbo")
    with pytest.raises(UserError, match=r"latent_fraction: expected a share of the batch in \[0, 1\]"):
        distil(tmp_path / "c", tiny_teacher, latent_fraction=1.5)
    with pytest.raises(UserError, match="teacher: expected the codec folder"):
        tiny(tmp_path / "c", latent_model="shapes-tiny-turbo", latent_prompts="p.txt")
    # the model must sample in the teacher's latent space
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle\n")
    with pytest.raises(UserError, match="latent_model shapes-tiny-turbo's codec encodes images to other tokens"):
        DecoderDistiller(distil(tmp_path / "c", tiny_teacher, latent_model="shapes-tiny-turbo",
                                latent_prompts=str(prompts)))
    with pytest.raises(UserError, match="latent_prompts .*missing.txt does not exist"):
        read_prompt_texts(str(tmp_path / "missing.txt"))
    light = run(distil(tmp_path / "light", tiny_teacher, steps=1), trainer_class=DecoderDistiller,
                progress=False)["final"]
    with pytest.raises(UserError, match=r"decoder_init .* has channels \[8, 8, 8\], not decoder_channels \[8, 8, 16\]"):
        DecoderDistiller(distil(tmp_path / "c", tiny_teacher, decoder_channels=[8, 8, 16], decoder_init=light))
    # an RL prompt set is read as one (held-out rules checked), a plain file line by line
    rl = tmp_path / "rl.jsonl"
    write_shapes_prompts(rl, load_rl_prompts_config(None, {"n": 20, "seed": 1}))
    assert read_prompt_texts(str(rl)) == [json.loads(ln)["prompt"] for ln in rl.read_text().splitlines()]
    assert read_prompt_texts(str(prompts)) == ["a red circle"]
