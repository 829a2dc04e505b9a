"""`lensgen distill` end to end on a tiny random teacher: every term trains, exact resume, the export samples
with the turbo preset, bad configs are refused by field, two gloo ranks agree."""

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from lensgen import cli
from lensgen.distill.config import load_distill_config
from lensgen.distill.turbo import TurboTrainer
from lensgen.errors import UserError
from lensgen.inference.pipeline import LensPipeline, PipelineDefaults
from lensgen.models.text_encoder import build_text_encoder
from lensgen.models.transformer import LensTransformer2DModel, preset
from lensgen.models.vae import build_codec

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
TINY = ["data.bases=[32]", "data.batch_size=2", "turbo.steps=2", "loss.fake_updates=2", "log.tensorboard=false",
        "checkpoint.every=1", "system.threads=1", "optim.lr=1e-3", "optim.fake_lr=1e-3"]
LOSSES = ("dm_push", "ca_push", "isg", "gan_generator", "fake_score", "gan_discriminator", "r1")


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    """A random one-block model of the shapes-tiny architecture sampling with CFG 2 and a random latent classifier's
    guidance, as a pipeline folder."""
    from lensgen.models.latent_classifier import LatentClassifier, LatentClassifierConfig

    torch.manual_seed(0)
    transformer = LensTransformer2DModel(replace(preset("shapes-tiny"), num_layers=2, num_attention_heads=1))
    codec = build_codec({"backend": "flux2-vae"})
    classifier = LatentClassifier(LatentClassifierConfig(channels=codec.token_channels, width=16, depth=2))
    pipe = LensPipeline(transformer, codec, build_text_encoder({"backend": "minilm"}),
                        PipelineDefaults(height=32, width=32, steps=6, cfg=2.0, max_side=128, schedule="train",
                                         classifier_scale=5.0),
                        name="tiny teacher", classifier=classifier)
    path = tmp_path_factory.mktemp("teacher") / "model"
    pipe.save_pretrained(path)
    return path


def config(tmp_path, teacher, out: str, steps: int, *more: str):
    return load_distill_config(CONFIGS / "distill-shapes.yaml", [f"out_dir={tmp_path / out}",
                                                                f"model.teacher={teacher}", f"optim.steps={steps}",
                                                                *TINY, *more])


def lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def weights(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_every_term_trains_and_the_export_samples_with_the_turbo_preset(tmp_path, teacher):
    trainer = TurboTrainer(config(tmp_path, teacher, "all", 2), progress=False)
    before = {name: weights(m) for name, m in (("student", trainer.student), ("fake", trainer.fake),
                                               ("head", trainer.models.head))}
    teacher_before = weights(trainer.teacher)
    summary = trainer.run()
    for name, m in (("student", trainer.student), ("fake", trainer.fake), ("head", trainer.models.head)):
        assert not torch.equal(before[name], weights(m)), f"{name} did not train"
    assert torch.equal(teacher_before, weights(trainer.teacher))
    metrics = lines(tmp_path / "all")
    assert [m["step"] for m in metrics] == [1, 2]
    for key in LOSSES:
        assert all(key in m and m[key] == m[key] for m in metrics), key  # present and not NaN
    pipe = LensPipeline.from_pretrained(summary["export"])
    assert (pipe.defaults.steps, pipe.defaults.cfg, pipe.defaults.solver) == (2, 1.0, "euler")
    assert pipe.classifier is None and pipe.defaults.classifier_scale == 0  # the teacher's is not carried over
    image = pipe("a red circle", seed=0)[0]
    assert image.size == (32, 32)


def test_turbo_speed_benchmark_counts_passes_at_each_models_defaults(tmp_path, teacher):
    """benchmarks/turbo_speed.py times teacher and student at their own defaults and counts the transformer
    passes per image: the teacher's 6 CFG steps are 12 passes, the 2-step student's 2; and counts each one's
    FLOPs per image, a call's being its parts'."""
    export = TurboTrainer(config(tmp_path, teacher, "bench", 1), progress=False).run()["export"]
    script = Path(__file__).resolve().parent.parent / "benchmarks" / "turbo_speed.py"
    out = tmp_path / "speed.json"
    proc = subprocess.run([sys.executable, str(script), "--teacher", str(teacher), "--student", str(export),
                           "--images", "2", "--batch", "2", "--rounds", "3", "--json", str(out),
                           "--grid", str(tmp_path / "grid.png")],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert (result["teacher"]["steps"], result["teacher"]["cfg"]) == (6, 2.0)
    assert (result["student"]["steps"], result["student"]["cfg"]) == (2, 1.0)
    assert result["teacher"]["passes_per_image"] == 12 and result["student"]["passes_per_image"] == 2
    assert result["target"] == 8.0
    # the speed-up is the median of the rounds' paired ratios (the two models' calls alternate within a round)
    ratios = [t / s for t, s in zip(result["teacher"]["seconds_rounds"], result["student"]["seconds_rounds"])]
    assert len(ratios) == 3 and result["speedup"] == pytest.approx(sorted(ratios)[1])
    # a call is its text encoding, its passes, its classifier guidance (the teacher's) and its decoding, nothing else
    assert result["teacher"]["gflops_per_image"]["guidance"] > 0 == result["student"]["gflops_per_image"]["guidance"]
    for name in ("teacher", "student"):
        g, passes = result[name]["gflops_per_image"], result[name]["passes_per_image"]
        assert min(g["text"], g["transformer_pass"], g["decode"]) > 0
        assert g["call"] == pytest.approx(g["text"] + passes * g["transformer_pass"] + g["guidance"] + g["decode"],
                                          rel=1e-6)
    assert result["flop_ratio"] == pytest.approx(result["teacher"]["gflops_per_image"]["call"]
                                                 / result["student"]["gflops_per_image"]["call"])
    assert "FLOP ratio (teacher / student per image)" in proc.stdout
    assert "speed-up (student / teacher images/s, median of the rounds' ratios)" in proc.stdout
    from PIL import Image

    with Image.open(tmp_path / "grid.png") as grid:  # 8 rows of 32 px images at 2x, two columns and a gap
        assert grid.size == (2 * 64 + 8, 8 * 64)


def test_switched_off_terms_are_not_computed(tmp_path, teacher):
    """Only DMD2 (equal weights, one range): no guidance or GAN terms run, and the discriminator stays put."""
    trainer = TurboTrainer(config(tmp_path, teacher, "dmd2", 1, "loss.isg_weight=0", "loss.gan_weight=0",
                                  "loss.ida_lambda=1.0"), progress=False)
    head = weights(trainer.models.head)
    trainer.run()
    (m,) = lines(tmp_path / "dmd2")
    assert {"dm_push", "ca_push", "fake_score"} <= set(m) and not {"isg", "gan_generator", "r1"} & set(m)
    assert torch.equal(head, weights(trainer.models.head))


def test_resume_repeats_the_same_losses(tmp_path, teacher):
    straight = TurboTrainer(config(tmp_path, teacher, "straight", 2), progress=False)
    straight.run()
    TurboTrainer(config(tmp_path, teacher, "stopped", 1), progress=False).run()
    resumed = TurboTrainer(config(tmp_path, teacher, "stopped", 2), resume=True, progress=False)
    assert resumed.step == 1
    resumed.run()
    a, b = lines(tmp_path / "straight"), lines(tmp_path / "stopped")
    assert [m["step"] for m in b] == [1, 2]
    for key in (*LOSSES, "student_grad_norm", "k"):
        assert a[1][key] == b[1][key], key
    assert torch.equal(weights(straight.student), weights(resumed.student))
    assert torch.equal(weights(straight.fake), weights(resumed.fake))


def test_resuming_a_finished_run_exports_it_again(tmp_path, teacher, capsys):
    """How a finished run's export is redone in another storage (the shipped Turbo model was re-exported in
    fp32 before being stored as differences): nothing trains, and the CLI says so."""
    TurboTrainer(config(tmp_path, teacher, "done", 1), progress=False).run()
    overrides = [f"out_dir={tmp_path / 'done'}", f"model.teacher={teacher}", "optim.steps=1", *TINY,
                 "checkpoint.export_storage=fp32"]
    assert cli.main(["distill", "--config", str(CONFIGS / "distill-shapes.yaml"), "--resume",
                     *[arg for o in overrides for arg in ("--set", o)]]) == 0
    assert "nothing left to train: the run is at step 1 of 1" in capsys.readouterr().out
    assert len(lines(tmp_path / "done")) == 1
    from safetensors import safe_open

    with safe_open(str(tmp_path / "done" / "final" / "transformer" / "diffusion_pytorch_model.safetensors"), "pt") as f:
        assert f.metadata()["lensgen_storage"] == "fp32"


def test_bad_config_fields_are_named(tmp_path, teacher):
    with pytest.raises(UserError, match="loss.ida_lambda"):
        config(tmp_path, teacher, "bad", 1, "loss.ida_lambda=1.5")
    with pytest.raises(UserError, match="loss.dm_sigma"):
        config(tmp_path, teacher, "bad", 1, "loss.dm_sigma=[0.5, 0.1]")
    with pytest.raises(UserError, match="at least one of"):
        config(tmp_path, teacher, "bad", 1, "loss.dm_weight=0", "loss.ca_weight=0", "loss.isg_weight=0",
               "loss.gan_weight=0")


def test_cli_help_names_the_terms(capsys):
    with pytest.raises(SystemExit):
        cli.main(["distill", "--help"])
    out = capsys.readouterr().out
    assert "decoupled DMD" in out and "SenseFlow" in out and "--resume" in out


@pytest.mark.slow
def test_torchrun_two_ranks_take_one_step_and_agree(tmp_path, teacher):
    out = tmp_path / "dist"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                    "-m", "lensgen.cli", "distill", "--quiet", "--config", str(CONFIGS / "distill-shapes.yaml"),
                    f"--set=out_dir={out}", f"--set=model.teacher={teacher}", "--set=optim.steps=1",
                    "--set=system.fsdp=true", *(f"--set={a}" for a in TINY)],
                   check=True, env=env, timeout=600)
    (m,) = lines(out)
    assert m["step"] == 1 and all(m[key] == m[key] for key in LOSSES)
    assert LensPipeline.from_pretrained(out / "final").defaults.steps == 2


def test_a_cfg_free_teacher_runs_one_conditional_pass(tmp_path, teacher):
    """An RL model that samples at CFG 1 is distilled at CFG 1: the real score is its conditional velocity,
    from a pass over the conditional rows only (the same velocity the batched [cond; uncond] pass gives)."""
    trainer = TurboTrainer(config(tmp_path, teacher, "cfg1", 1, "model.teacher_cfg=1"), progress=False)
    assert trainer.cfg_scale == 1.0
    x0, grid, text = trainer._batch(torch.Generator().manual_seed(0))
    n = x0.shape[0]
    rows = []
    trainer.teacher.register_forward_hook(lambda module, args, output: rows.append(output.shape[0]))
    sigma = torch.full((n,), 0.6)
    x = 0.4 * x0 + 0.6 * torch.randn_like(x0)
    v_cond, v_guided = trainer._teacher(x, sigma, grid, text)
    assert rows == [n] and torch.equal(v_cond, v_guided)
    trainer.cfg_scale = 2.0  # the batched pass over [cond; uncond]
    both_cond, both_guided = trainer._teacher(x, sigma, grid, text)
    assert rows == [n, 2 * n] and not torch.allclose(both_guided, both_cond)
    torch.testing.assert_close(v_cond, both_cond, atol=1e-5, rtol=1e-5)


def test_a_lighter_decoder_for_the_teachers_vae_is_exported_with_the_student(tmp_path, teacher):
    """`model.codec`: the student decodes through a decoder distilled for the teacher's VAE (same tokens); a
    codec that encodes differently is refused by field."""
    from diffusers import AutoencoderKLFlux2

    from lensgen.models.vae import SHAPES_VAE_DIR, Flux2VAECodec
    from lensgen.train.decoder_distill import run
    from lensgen.train.shapes_vae import VAETrainConfig

    light = run(VAETrainConfig(out_dir=str(tmp_path / "light"), teacher=str(SHAPES_VAE_DIR),
                               decoder_channels=[16, 16, 16], steps=1, batch_size=2, bases=[32], stats_images=2,
                               eval_images=2), progress=False)["final"]
    summary = TurboTrainer(config(tmp_path, teacher, "light-student", 1, f"model.codec={light}"), progress=False).run()
    pipe = LensPipeline.from_pretrained(summary["export"])
    assert list(pipe.codec.vae.config.decoder_block_out_channels) == [16, 16, 16]
    assert pipe("a red circle", seed=0)[0].size == (32, 32)
    # the benchmark's --same-decoder: the teacher's passes decoded through the student's lighter VAE
    import importlib.util

    spec = importlib.util.spec_from_file_location("turbo_speed", CONFIGS.parent / "benchmarks" / "turbo_speed.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    result = bench.compare(str(teacher), summary["export"], images=2, batch=2, rounds=1, same_decoder=True)
    same, student, own = result["teacher_student_decoder"], result["student"], result["teacher"]
    assert same["passes_per_image"] == own["passes_per_image"] == 12
    assert same["gflops_per_image"]["decode"] == pytest.approx(student["gflops_per_image"]["decode"])
    assert student["gflops_per_image"]["decode"] < 0.5 * own["gflops_per_image"]["decode"]
    assert result["flop_ratio_same_decoder"] < result["flop_ratio"]

    torch.manual_seed(0)
    other = AutoencoderKLFlux2(**{k: v for k, v in dict(pipe.codec.vae.config).items() if not k.startswith("_")})
    Flux2VAECodec(other).save_pretrained(tmp_path / "other")
    with pytest.raises(UserError, match=r"model.codec .* encodes images to other tokens"):
        TurboTrainer(config(tmp_path, teacher, "other", 1, f"model.codec={tmp_path / 'other'}"), progress=False)


def test_a_teacher_with_a_layout_input_gets_each_quoting_prompts_planned_sign(tmp_path, monkeypatch):
    """The student samples as the pipeline does: a prompt quoting a word gets its planned sign as the layout on
    every pass of the teacher, the student and the fake score's flow matching (one for the batch, zeros for a
    prompt that quotes nothing); the GAN's passes, real images included, see the prompt alone."""
    import lensgen.distill.turbo as turbo

    torch.manual_seed(0)
    transformer = LensTransformer2DModel(replace(preset("shapes-tiny"), num_layers=2, num_attention_heads=1,
                                                 layout_channels=64))
    pipe = LensPipeline(transformer, build_codec({"backend": "flux2-vae"}), build_text_encoder({"backend": "minilm"}),
                        PipelineDefaults(height=32, width=32, steps=6, cfg=1.0, max_side=128, schedule="train"),
                        name="tiny teacher with a layout input")
    pipe.save_pretrained(tmp_path / "teacher")
    quoting = 'a sign that says "CAT"'
    real_pick = turbo.pick_caption
    calls = iter(range(10**6))
    monkeypatch.setattr(turbo, "pick_caption", lambda *a: quoting if next(calls) % 2 == 0 else real_pick(*a))
    trainer = TurboTrainer(config(tmp_path, tmp_path / "teacher", "layout", 1), progress=False)
    seen = {"teacher": [], "student": [], "fake": []}
    for name in seen:
        getattr(trainer, name).register_forward_hook(
            lambda module, args, kwargs, output, name=name: seen[name].append(kwargs.get("layout")), with_kwargs=True)
    metrics = trainer.distill_step()
    assert all(m == m for m in metrics.values())
    assert seen["teacher"] and seen["student"] and all(x is not None for x in seen["teacher"] + seen["student"])
    layout = seen["student"][0]
    assert all(torch.equal(x, layout) for x in seen["student"])
    assert all(torch.equal(x, torch.cat([layout] * (x.shape[0] // layout.shape[0]))) for x in seen["teacher"])
    assert layout.shape[::2] == (2, 64) and layout[0].any() and not layout[1].any()
    assert 0.05 < float(layout[0].mean()) < 0.9  # a white board on black, letters cut out of it
    with_layout = [x for x in seen["fake"] if x is not None]
    assert len(with_layout) == 1 + 2 and all(torch.equal(x, layout) for x in with_layout)  # DMD + 2 fake updates
    # the GAN's reads, without it: the generator's, then per update the student's images, the real ones, R1's two
    assert len(seen["fake"]) - len(with_layout) == 1 + 2 * 4
    student = LensPipeline.from_pretrained(trainer.export(tmp_path / "export")).transformer
    assert student.config.layout_channels == 64
