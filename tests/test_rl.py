"""`lensgen rl` end to end on a tiny random model: exact resume, failed rewards masked out, the pretraining
anchor, LoRA, the Lens config's batch shape, and two gloo ranks under torchrun that agree."""

import copy
import importlib.util
import json
import math
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from lensgen import cli
from lensgen.data.rl_prompts import load_rl_prompts
from lensgen.data.rl_prompts.grammar import generate_shapes_prompts
from lensgen.data.rl_prompts.records import write_rl_prompts
from lensgen.errors import UserError
from lensgen.flow.sampler import guided_velocity
from lensgen.inference.pipeline import DEFAULT_MODEL_DIR, LensPipeline, PipelineDefaults
from lensgen.models.latent_classifier import LatentClassifier, LatentClassifierConfig, guidance
from lensgen.models.text_encoder import build_text_encoder
from lensgen.models.transformer import LensTransformer2DModel, preset
from lensgen.models.vae import build_codec
from lensgen.rl.backprop import RewardBackpropTrainer, asked_word, learnable_prompt
from lensgen.rl.batches import plan_jobs
from lensgen.rl.config import load_rl_config
from lensgen.rl.ptx import PretrainAnchor
from lensgen.rl.rewards import RewardResult
from lensgen.rl.trainer import NFTTrainer
from lensgen.shapes.heldout import TRAIN_WORDS

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
SHIPPED = DEFAULT_MODEL_DIR  # a trained model: its rewards vary within a group, so the loss has a gradient
PRETRAINED = DEFAULT_MODEL_DIR.parent / "shapes-tiny-base"
TINY = [
    "data.prompts_per_step=2", "data.images_per_prompt=2", "data.buckets_per_prompt=1", "data.bases=[48]",
    "sample.steps=3", "sample.batch_size=4", "optim.train_batch_size=4", "optim.lr=1e-3",
    "log.eval_every=0", "log.tensorboard=false", "checkpoint.every=1", "system.threads=1",
    "reward.weights={rubric: 1.0}", "optim.kl_weight=1e-4",
]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A random one-block model of the shapes-tiny architecture, as a pipeline folder."""
    torch.manual_seed(0)
    transformer = LensTransformer2DModel(replace(preset("shapes-tiny"), num_layers=1, num_attention_heads=1))
    pipe = LensPipeline(transformer, build_codec({"backend": "flux2-vae"}), build_text_encoder({"backend": "minilm"}),
                        PipelineDefaults(height=32, width=32, steps=3, cfg=1.0, max_side=128, schedule="train"),
                        name="tiny random")
    path = tmp_path_factory.mktemp("tiny") / "model"
    pipe.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def prompts(tmp_path_factory) -> Path:
    records, _ = generate_shapes_prompts(n=40, seed=3)
    path = tmp_path_factory.mktemp("prompts") / "rl-prompts.jsonl"
    write_rl_prompts(path, records, {"mode": "shapes", "n": 40, "seed": 3})
    return path


def config(tmp_path, tiny_model, prompts, out: str, steps: int, *more: str, path=CONFIGS / "rl-shapes.yaml"):
    return load_rl_config(path, [f"out_dir={tmp_path / out}", f"model.init_from={tiny_model}",
                                 f"data.prompts={prompts}", f"optim.steps={steps}", *TINY, *more])


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_resume_replays_the_same_steps_and_exports_a_cfg_free_model(tmp_path, prompts):
    NFTTrainer(config(tmp_path, SHIPPED, prompts, "straight", 3), progress=False).run()
    NFTTrainer(config(tmp_path, SHIPPED, prompts, "split", 2), progress=False).run()
    NFTTrainer(config(tmp_path, SHIPPED, prompts, "split", 3), resume=True, progress=False).run()
    a, b = lines(tmp_path / "straight"), lines(tmp_path / "split")
    assert [m["step"] for m in b] == [1, 2, 3]
    # resuming a finished run trains nothing, re-exports, and reports the last logged step
    again = NFTTrainer(config(tmp_path, SHIPPED, prompts, "split", 3), resume=True, progress=False).run()
    assert again["steps_this_run"] == 0 and again["final"]["reward_mean"] == b[-1]["reward_mean"]
    assert json.loads((tmp_path / "split" / "summary.json").read_text())["steps_this_run"] == 1  # kept
    assert len(lines(tmp_path / "split")) == 3
    for key in ("reward_mean", "policy_loss", "kl", "grad_norm"):
        assert [m[key] for m in b] == pytest.approx([m[key] for m in a], rel=1e-5, abs=1e-7), key
    assert all(m["grad_norm"] > 0 for m in a) and a[1]["kl"] > 0 and a[0]["old_decay"] == pytest.approx(0.001)
    # the exported EMA models are the same, sample without CFG, and `lensgen generate` loads them
    wa = LensTransformer2DModel.from_pretrained(tmp_path / "straight" / "final" / "transformer").state_dict()
    wb = LensTransformer2DModel.from_pretrained(tmp_path / "split" / "final" / "transformer").state_dict()
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)
    assert (tmp_path / "straight" / "reward.png").read_bytes()[:4] == b"\x89PNG"
    index = json.loads((tmp_path / "straight" / "final" / "model_index.json").read_text())["lensgen"]
    assert index["cfg"] == 1.0 and index["solver"] == "dpm2"
    # the start's classifier is not carried into the export, nor its guidance default
    assert index["classifier_scale"] == 0 and not (tmp_path / "straight" / "final" / "classifier").exists()
    out = tmp_path / "x.png"
    assert cli.main(["generate", "a red circle", "--model", str(tmp_path / "straight" / "final"), "--steps", "2",
                     "-o", str(out), "-q"]) == 0 and out.stat().st_size > 0


def test_failed_rewards_are_masked_out_of_the_loss(tmp_path, tiny_model, prompts, monkeypatch):
    trainer = NFTTrainer(config(tmp_path, tiny_model, prompts, "masked", 1), progress=False)

    def half_fail(images, texts, rubrics):
        n = len(images)
        valid = torch.tensor([i % 2 == 0 for i in range(n)])
        scores = torch.where(valid, torch.arange(n, dtype=torch.float32) / n, torch.full((n,), float("nan")))
        return RewardResult(scores, valid, [{"items": [], "global": None, "reason": ""}] * n)

    monkeypatch.setattr(trainer.scorer, "reward", half_fail)
    trained = []
    original = trainer.train_on
    monkeypatch.setattr(trainer, "train_on", lambda samples: trained.extend(samples) or original(samples))
    metrics = trainer.rl_step()
    assert metrics["invalid_share"] == pytest.approx(0.5) and metrics["trained"] == 2
    assert all(s.valid for s in trained if s.advantage != 0) and all(s.advantage == 0 for s in trained if not s.valid)
    assert metrics["policy_loss"] == metrics["policy_loss"]  # finite: no NaN from the failed scores


def _constant_reward(images, texts, rubrics):
    n = len(images)
    return RewardResult(torch.full((n,), 0.5), torch.ones(n, dtype=torch.bool),
                        [{"items": [], "global": None, "reason": ""}] * n)


PTX = ["ptx.weight=2.0", "ptx.batch_size=3", "ptx.items=64", "optim.kl_weight=0"]


def test_ptx_anchor_adds_the_pretraining_flow_matching_gradient(tmp_path, tiny_model, prompts, monkeypatch):
    """ptx.weight: each optimiser step adds that weight times the rectified-flow loss of a batch of the
    pretraining data. With every advantage 0 the NFT gradient at the first step is exactly 0 (r = 1/2 and
    v = v_old), so the step's gradient must be the anchor's alone, as an independent anchor computes it."""
    trainer = NFTTrainer(config(tmp_path, tiny_model, prompts, "ptx", 1, *PTX, "optim.grad_clip=1e6"),
                         progress=False)  # no clipping: the gradient is compared as computed
    monkeypatch.setattr(trainer.scorer, "reward", _constant_reward)
    start = copy.deepcopy(trainer.policy.model)
    grads = {}
    monkeypatch.setattr(trainer.optimizer, "step", lambda: grads.update(
        {n: p.grad.clone() for n, p in trainer.policy.model.named_parameters()}))
    metrics = trainer.rl_step()

    anchor = PretrainAnchor(trainer.cfg.ptx, trainer.table, trainer.codec, trainer.text_encoder, trainer.info,
                            trainer.cfg.optim.seed)
    loss = anchor.loss(start, (trainer.cfg.optim.seed, 0, 0), torch.autocast("cpu", enabled=False),
                       torch.device("cpu"), torch.float32)
    (2.0 * loss).backward()
    assert metrics["ptx_loss"] == pytest.approx(loss.item(), rel=1e-5) and loss.item() > 0.1
    for name, p in start.named_parameters():
        torch.testing.assert_close(grads[name], p.grad if p.grad is not None else torch.zeros_like(p),
                                   atol=1e-6, rtol=1e-4)
    assert any(g.abs().sum() > 0 for g in grads.values())
    # the batch is real Shapes data: scenes of one bucket with their short captions
    scenes = PretrainAnchor(trainer.cfg.ptx, trainer.table, trainer.codec, trainer.text_encoder, trainer.info, 0)
    keys = next(iter(scenes.source))
    assert len(keys) == 3 and all(scenes.source.load(k)[1]["short"] for k in keys)


def test_ptx_anchor_resumes_at_its_place_in_the_data(tmp_path, tiny_model, prompts):
    NFTTrainer(config(tmp_path, tiny_model, prompts, "straight", 3, *PTX), progress=False).run()
    NFTTrainer(config(tmp_path, tiny_model, prompts, "split", 1, *PTX), progress=False).run()
    NFTTrainer(config(tmp_path, tiny_model, prompts, "split", 3, *PTX), resume=True, progress=False).run()
    a, b = lines(tmp_path / "straight"), lines(tmp_path / "split")
    assert len({m["ptx_loss"] for m in a}) == 3  # a new batch each step
    for key in ("ptx_loss", "policy_loss", "grad_norm"):
        assert [m[key] for m in b] == pytest.approx([m[key] for m in a], rel=1e-5, abs=1e-7), key


def test_ptx_settings_are_checked(tmp_path, tiny_model, prompts):
    with pytest.raises(UserError, match="ptx.shards"):
        config(tmp_path, tiny_model, prompts, "bad", 1, "ptx.weight=1", "ptx.source=shards")
    with pytest.raises(UserError, match="ptx.caption.*short, dense or mixed"):
        config(tmp_path, tiny_model, prompts, "bad", 1, "ptx.weight=1", "ptx.caption=long")
    with pytest.raises(UserError, match="ptx.source"):
        config(tmp_path, tiny_model, prompts, "bad", 1, "ptx.weight=1", "ptx.source=web")
    assert NFTTrainer(config(tmp_path, tiny_model, prompts, "off", 1), progress=False).ptx is None


BACKPROP = ["optim.objective=backprop", "data.images_per_prompt=1", "data.prompts_per_step=3", "optim.kl_weight=0.1",
            "optim.ema_decay=0", "optim.lr=1e-4"]


def test_reward_backprop_resumes_exactly_and_trains_on_the_shape_prompts_only(tmp_path, prompts):
    straight = RewardBackpropTrainer(config(tmp_path, SHIPPED, prompts, "straight", 2, *BACKPROP), progress=False)
    assert all(learnable_prompt(p, text=False) and asked_word(p) is None for p in straight.prompts)
    assert len(straight.prompts) < len(load_rl_prompts(prompts))  # the file's sign prompts are left out
    assert straight.scorer is None  # scored inside the step: no reward thread waits idle
    straight.run()
    RewardBackpropTrainer(config(tmp_path, SHIPPED, prompts, "split", 1, *BACKPROP), progress=False).run()
    RewardBackpropTrainer(config(tmp_path, SHIPPED, prompts, "split", 2, *BACKPROP), resume=True,
                          progress=False).run()
    a, b = lines(tmp_path / "straight"), lines(tmp_path / "split")
    assert [m["step"] for m in b] == [1, 2]
    for key in ("reward_mean", "read_right", "colour_right", "kl", "grad_norm"):
        assert [m[key] for m in b] == pytest.approx([m[key] for m in a], rel=1e-5, abs=1e-7, nan_ok=True), key
    # the shipped model draws objects, so the margins have a gradient; the pull is 0 until the policy moves
    assert a[0]["matched_share"] > 0 and all(m["grad_norm"] > 0 for m in a)
    assert a[0]["kl"] == 0 and a[1]["kl"] > 0
    start = LensTransformer2DModel.from_pretrained(SHIPPED / "transformer").state_dict()
    trained = LensTransformer2DModel.from_pretrained(tmp_path / "straight" / "final" / "transformer").state_dict()
    assert any(not torch.equal(start[k], trained[k]) for k in start)
    index = json.loads((tmp_path / "straight" / "final" / "model_index.json").read_text())
    assert index["name"].endswith("reward backprop step 2") and index["lensgen"]["cfg"] == 1.0


def test_reward_backprop_settings_are_checked(tmp_path, tiny_model, prompts):
    with pytest.raises(UserError, match="data.images_per_prompt.*at least 2"):
        config(tmp_path, tiny_model, prompts, "bad", 1, "data.images_per_prompt=1")
    with pytest.raises(UserError, match="optim.objective.*nft or backprop"):
        config(tmp_path, tiny_model, prompts, "bad", 1, "optim.objective=ppo")
    with pytest.raises(UserError, match="optim.kl_guidance"):
        config(tmp_path, tiny_model, prompts, "bad", 1, *BACKPROP, "optim.kl_guidance=3")
    with pytest.raises(UserError, match="backprop.colour_weight"):
        config(tmp_path, tiny_model, prompts, "bad", 1, *BACKPROP, "backprop.colour_weight=-1")
    with pytest.raises(UserError, match="backprop.grad_below"):
        config(tmp_path, tiny_model, prompts, "bad", 1, *BACKPROP, "backprop.grad_below=0")
    with pytest.raises(UserError, match="model.lora_rank"):
        config(tmp_path, tiny_model, prompts, "bad", 1, *BACKPROP, "model.lora_rank=4")
    with pytest.raises(UserError, match="backprop.text_cap"):
        config(tmp_path, tiny_model, prompts, "bad", 1, *BACKPROP, "backprop.text_cap=1")
    with pytest.raises(UserError, match="no prompt asks for a shape without a sign"):
        RewardBackpropTrainer(config(tmp_path, tiny_model, _sign_prompts(tmp_path, prompts), "signs", 1, *BACKPROP),
                              progress=False)


def _sign_prompts(tmp_path, prompts, only_signs: bool = False):
    """The prompts of the file that ask for a sign's word (`only_signs`: and for nothing else)."""
    signs = tmp_path / ("only-signs.jsonl" if only_signs else "signs.jsonl")
    write_rl_prompts(signs, [p for p in load_rl_prompts(prompts)
                             if asked_word(p) and not (only_signs and p.rubric.expected)], {"mode": "shapes"})
    return signs


def test_reward_backprop_learns_a_signs_word_with_text_weight(tmp_path, prompts):
    """With backprop.text_weight the sign prompts count: on prompts that ask for a sign and nothing else, the
    OCR's log-likelihood of the asked word is the whole reward (the pretrained model draws their signs), and its
    gradient reaches the weights and moves them."""
    run = RewardBackpropTrainer(config(tmp_path, PRETRAINED, _sign_prompts(tmp_path, prompts, only_signs=True),
                                       "signs", 1, *BACKPROP, "backprop.text_weight=0.1", "data.prompts_per_step=2"),
                                progress=False)
    assert run.words and all(run.words) and not any(run.asked)
    run.run()
    (m,) = lines(tmp_path / "signs")
    assert m["word_log_likelihood"] < 0 and 0 <= m["word_read"] <= 1 and m["grad_norm"] > 0
    start = LensTransformer2DModel.from_pretrained(PRETRAINED / "transformer").state_dict()
    trained = LensTransformer2DModel.from_pretrained(tmp_path / "signs" / "final" / "transformer").state_dict()
    assert any(not torch.equal(start[k], trained[k]) for k in start)


def test_a_model_with_a_layout_input_samples_and_trains_with_each_quoting_prompts_planned_sign(tmp_path, prompts):
    """RL samples as the pipeline does: a prompt quoting a word gets its planned sign (from the prompt and the
    image's noise seed) as the layout, on the collection's passes and on the loss's passes of the policy, the
    old policy and the reference; a prompt that quotes nothing gets none. Both objectives."""
    from lensgen.rl.batches import noise_seed
    from lensgen.shapes.sign_layout import planned_layouts

    torch.manual_seed(0)
    transformer = LensTransformer2DModel(replace(preset("shapes-tiny"), num_layers=1, num_attention_heads=1,
                                                 layout_channels=64))
    LensPipeline(transformer, build_codec({"backend": "flux2-vae"}), build_text_encoder({"backend": "minilm"}),
                 PipelineDefaults(height=32, width=32, steps=3, cfg=1.0, max_side=128, schedule="train"),
                 name="tiny random with a layout input").save_pretrained(tmp_path / "model")
    records = load_rl_prompts(prompts)
    mixed = [next(p for p in records if asked_word(p)), next(p for p in records if not asked_word(p))]
    write_rl_prompts(tmp_path / "mixed.jsonl", mixed, {"mode": "shapes"})

    trainer = NFTTrainer(config(tmp_path, tmp_path / "model", tmp_path / "mixed.jsonl", "nft", 1), progress=False)
    seen = {"policy": [], "old": [], "reference": []}
    for name, module in (("policy", trainer.policy.model), ("old", trainer.policy.old_module),
                         ("reference", trainer.policy.reference)):
        module.register_forward_hook(lambda m, args, kwargs, out, name=name: seen[name].append(kwargs["layout"]),
                                     with_kwargs=True)
    collected, sampling = [], []
    original = trainer.train_on
    trainer.train_on = lambda samples: collected.extend(samples) or sampling.extend(seen["old"]) or original(samples)
    trainer.rl_step()
    f = trainer.codec.spatial_factor
    expected = []
    for s in collected:
        prompt = trainer.prompts[s.job.prompt].prompt
        if asked_word(trainer.prompts[s.job.prompt]) is None:
            assert s.layout is None
            continue
        seed = noise_seed(trainer.cfg.optim.seed, 0, s.job.slot, s.job.index)
        plan = planned_layouts([prompt], [seed], s.grid[0] * f, s.grid[1] * f, f)[0]
        assert s.layout is not None and torch.equal(s.layout, torch.from_numpy(plan))
        expected.append(s.layout)
    assert expected and len(expected) < len(collected)
    for name, layouts in seen.items():
        given = [x for x in layouts if x is not None]
        assert given, f"{name}: no pass got a layout"
        rows = [row for x in given for row in x]
        assert all(not row.any() or any(torch.equal(row, e) for e in expected) for row in rows), name
    assert any(x is not None for x in sampling)  # the collection's passes

    trainer = RewardBackpropTrainer(config(tmp_path, tmp_path / "model", tmp_path / "mixed.jsonl", "backprop", 1,
                                           *BACKPROP, "data.prompts_per_step=2", "backprop.text_weight=0.1"),
                                    progress=False)
    seen = {"policy": [], "reference": []}
    for name, module in (("policy", trainer.policy.model), ("reference", trainer.policy.reference)):
        module.register_forward_hook(lambda m, args, kwargs, out, name=name: seen[name].append(kwargs["layout"]),
                                     with_kwargs=True)
    planned, plan = [], trainer.sign_layouts
    trainer.sign_layouts = lambda batch, grid: planned.append(plan(batch, grid)) or planned[-1]
    trainer.rl_step()
    assert any(x is not None for x in planned)
    for name, layouts in seen.items():
        assert any(x is not None for x in layouts), name
        assert all(any(x is y for y in planned) for x in layouts), name  # each batch's own plan


def _benchmark(name: str):
    spec = importlib.util.spec_from_file_location(name, CONFIGS.parent / "benchmarks" / f"{name}.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_pretraining_loss_benchmark_pairs_models_on_the_same_batches(tmp_path, tiny_model, capsys):
    bench = _benchmark("pretraining_loss")
    other = _random_pipeline(tmp_path / "other", seed=1)
    table = bench.main([str(tiny_model), str(tiny_model), str(other), "--batches", "3", "--batch-size", "2",
                        "--threads", str(torch.get_num_threads())])  # the suite's own setting stays
    same, different = table[str(tiny_model)], table[str(other)]
    assert len(same) == 3 and len(set(same)) == 3  # three different batches, the same for every model
    assert bench.paired(same, same) == (0.0, 0.0) and bench.paired(same, different)[0] != 0
    assert "vs " + str(tiny_model) in capsys.readouterr().out


def test_shape_margin_benchmark_reads_true_shapes_right_and_fits_on_them(tmp_path, tiny_model, capsys):
    """benchmarks/shape_margin.py: true scenes are read as their shape with a positive margin, a circle asked to
    be a hexagon has a negative one, and every source (VAE round trip, model, model fitted on true scenes, each
    model started from the noised true scenes) gets its row."""
    bench = _benchmark("shape_margin")
    circles = [bench.render(scene, 48, 48) for _, scene in bench.true_scenes("circle", 2, 48, seed=5)]
    as_hexagon = bench.margins(circles, "hexagon")
    assert as_hexagon["right"] == 0.0 and as_hexagon["margin_median"] < 0 and as_hexagon["read_as"] == {"circle": 2}
    table = bench.main([str(tiny_model), "--shapes", "hexagon", "star", "--n", "3", "--size", "48", "--fit", "2",
                        "--fit-images", "4", "--fit-sigma-logit", "-2", "0.7", "--save", str(tmp_path / "fitted"),
                        "--from-sigma", "0.5", "--prompt-shape", "circle", "--threads", str(torch.get_num_threads())])
    fitted = LensPipeline.from_pretrained(tmp_path / "fitted")
    start = LensPipeline.from_pretrained(tiny_model)
    assert any(not torch.equal(a, b) for a, b in zip(fitted.transformer.parameters(), start.transformer.parameters()))
    for shape in ("hexagon", "star"):
        rows = table[shape]
        assert rows["true scenes"]["right"] == 1.0 and rows["true scenes"]["margin_median"] > 0
        assert list(rows) == ["true scenes", f"true scenes through {tiny_model}'s VAE", str(tiny_model),
                              f"{tiny_model} + fit 2", f"{tiny_model} from true scenes at sigma 0.5, asked for a circle",
                              f"{tiny_model} + fit 2 from true scenes at sigma 0.5, asked for a circle"]
        assert all(r["images"] == 3 and sum(r["read_as"].values()) == 3 for r in rows.values())
    assert "read right" in capsys.readouterr().out


def test_token_space_benchmark_builds_each_space_and_reads_every_shape_of_every_model(tmp_path):
    """benchmarks/token_space.py: each token space gets the shapes-tiny transformer sized for its tokens (the
    VAE's 16 values on 8x8 tokens, pixels' 192 on 8x8 or 48 on 16x16) that draws 64x64 images, and after
    training every space has a row with every shape read."""
    bench = _benchmark("token_space")
    encoder = LensPipeline.from_pretrained("shapes-tiny-base").text_encoder
    for space, channels, side in (("vae", 16, 2), ("pixel8", 192, 8), ("pixel4", 48, 4)):
        pipe = bench.fresh_pipeline(space, encoder)
        config = pipe.transformer.config
        assert (config.in_channels, config.patch_size, pipe.codec.token_channels) == (channels, side, channels)
        assert pipe(["a photo of a red star"], steps=2, seed=0)[0].size == (64, 64)
    table = bench.main(["--spaces", "vae", "pixel4", "--steps", "2", "--images", "12", "--n", "1",
                        "--json", str(tmp_path / "table.json"), "--threads", str(torch.get_num_threads())])
    assert [(s, r["tokens"]) for s, r in table.items()] == [("vae", 64), ("pixel4", 256)]
    assert all(sum(r["read_as"].values()) == 1 for row in table.values() for r in row["shapes"].values())
    assert json.loads((tmp_path / "table.json").read_text()).keys() == table.keys()


def test_sign_from_sigma_benchmark_reads_true_signs_and_starts_each_model_at_each_level(tiny_model):
    """benchmarks/sign_from_sigma.py: the true signs (training words only) read exactly, and every model gets a
    row per level, from the noised signs below 1 and from pure noise at 1."""
    bench = _benchmark("sign_from_sigma")
    words, images = bench.true_signs(4, 64)
    assert set(words) <= set(TRAIN_WORDS) and bench.read(images, words) == {"similarity": 1.0, "exact": 1.0}
    table = bench.main([str(tiny_model), "--levels", "0.02", "1", "--n", "3", "--size", "64",
                        "--threads", str(torch.get_num_threads())])
    assert list(table) == ["true signs", f"true signs through {tiny_model}'s VAE", f"{tiny_model} from sigma 0.02",
                           f"{tiny_model} from sigma 1"]
    assert table["true signs"]["exact"] == 1.0
    assert all(0 <= row["similarity"] <= 1 for row in table.values())
    with pytest.raises(SystemExit):
        bench.main([str(tiny_model), "--levels", "0"])


def _skip_sign_reading(bench, monkeypatch) -> None:
    """The sign probe's sampling check stubbed: the OCR over 120 images is the slow part."""
    monkeypatch.setattr(bench, "read_scores", lambda pipe, size: {
        "held_out_words": 0.0, "training_words": 0.0, "held_out_other": 0.0, "training_other": 0.0,
        "same_reading": 0.0, "reads": []})


def test_sign_probe_glyph_tokens_show_the_word_and_the_sign_loss_weight_covers_the_sign(tiny_model, monkeypatch):
    """benchmarks/sign_finetune_probe.py --glyph: the glyph tokens put back together read as the word; a prompt
    without a quoted word gets none; the sign's tokens are those its box touches; and a glyph run with the sign
    weighted trains the model (the sampling check stubbed: the OCR over 120 images is the slow part)."""
    from PIL import Image

    from lensgen.shapes.ocr import read_text

    bench = _benchmark("sign_finetune_probe")
    columns = bench.glyph_columns("CAT")
    strip = columns.view(-1, bench.GLYPH_HEIGHT, bench.GLYPH_COLUMN).permute(1, 0, 2).flatten(1)
    drawn = Image.fromarray(((1 - strip) * 255).byte().numpy()).resize((strip.shape[1] * 4, 64))
    assert read_text(drawn, (0, 0, drawn.width, drawn.height)) == "CAT"
    features, mask = bench.glyph_features(['a sign that says "CAT"', "a red star"], 384, 4)
    assert mask.tolist() == [[True] * len(columns), [False] * len(columns)]
    assert torch.equal(features[0, :, 2, :128], columns) and not features[1].any()
    assert features[0, :, 0, 128:144].argmax(-1).tolist() == list(range(len(columns)))  # each column's index
    assert bench.sign_tokens((8.0, 16.0, 24.0, 20.0), 64, 8).view(8, 8).nonzero().tolist() == [[2, 1], [2, 2]]
    _skip_sign_reading(bench, monkeypatch)
    drawn_for, real_glyphs = [], bench.glyph_features
    monkeypatch.setattr(bench, "glyph_features", lambda prompts, *a: drawn_for.append(prompts) or real_glyphs(prompts, *a))
    rows = bench.main([str(tiny_model), "--steps", "2", "--batch-size", "2", "--glyph", "--no-spell",
                       "--sign-weight", "10", "--threads", str(torch.get_num_threads())])
    assert [r["step"] for r in rows] == [0, 2] and math.isfinite(rows[-1]["loss"])
    assert len(drawn_for) == 2 and all(bench.QUOTED.search(p).group(1) in TRAIN_WORDS for b in drawn_for for p in b)


def test_sign_probe_canvas_trains_the_layout_input_on_each_scenes_own_sign(tiny_model, monkeypatch):
    """benchmarks/sign_finetune_probe.py --canvas: the transformer gets a layout input and each step passes the
    true signs' layouts (the sampling check stubbed)."""
    bench = _benchmark("sign_finetune_probe")
    _skip_sign_reading(bench, monkeypatch)
    drawn, real_layout = [], bench.layout_tokens
    monkeypatch.setattr(bench, "layout_tokens", lambda sign, *a: drawn.append(sign) or real_layout(sign, *a))
    rows = bench.main([str(tiny_model), "--steps", "2", "--batch-size", "2", "--canvas", "--no-spell",
                       "--threads", str(torch.get_num_threads())])
    assert [r["step"] for r in rows] == [0, 2] and math.isfinite(rows[-1]["loss"])
    assert len(drawn) == 2 * 2 and all(sign.word in TRAIN_WORDS for sign in drawn)


def test_sign_probe_scores_each_reading_against_the_other_words_as_chance():
    """sign_finetune_probe's chance baseline: a reading scored against the other words of its set, so that a
    model writing its words scores above it and one writing the same letters whatever it is asked does not."""
    from lensgen.eval.shapes import SampleResult
    from lensgen.shapes.ocr import text_similarity

    bench = _benchmark("sign_finetune_probe")

    def sample(word, read, seed):
        reason = "" if read == word else f"read '{read}' for '{word}'"
        return SampleResult(id=word, task="text", prompt=f'a sign that says "{word}"', seed=seed, score=0.0,
                            reason=reason)

    written = [sample(w, w, k) for w in ("CAT", "KEY", "SKY") for k in range(2)]
    assert bench.readings(written[:1]) == [("CAT", "CAT")]
    # each exact word against the other two: CAT 0 (KEY 0, SKY 0), KEY and SKY 1/6 (each other 1/3, CAT 0)
    assert bench.against_other_words(written) == pytest.approx((0 + 1 / 6 + 1 / 6) / 3)
    soup = [sample(w, "KY", k) for w in ("CAT", "KEY", "SKY") for k in range(2)]
    own = sum(text_similarity("KY", w) for w in ("CAT", "KEY", "SKY")) / 3
    assert bench.against_other_words(soup) == pytest.approx(own)  # letter soup: chance equals its own score
    assert bench.same_reading(soup) == 1.0 and bench.same_reading(written) == 0.0


def test_self_fit_keeps_only_passing_images_best_first_on_fixed_seeds(tiny_model, prompts, monkeypatch):
    """benchmarks/self_fit.py's collection: a pass is the reward's score >= the threshold; at most `keep` per
    prompt, the best partial credit first; the same model gives the same images (before/after are paired)."""
    bench = _benchmark("self_fit")

    def brightness(images, texts, rubrics):  # a deterministic stand-in judge: the image's mean level
        scores = torch.tensor([float(torch.tensor(list(im.convert("L").getdata())).float().mean()) for im in images])
        return RewardResult(scores, torch.ones(len(images), dtype=torch.bool), [{} for _ in images])

    monkeypatch.setattr(bench, "build_reward", lambda spec: brightness)
    pipe = LensPipeline.from_pretrained(tiny_model)
    records = load_rl_prompts(prompts)[:3]
    everything = bench.collect(pipe, records, n=4, keep=4, reward="x", threshold=0.0, steps=2, seed=0, batch=8)
    levels = sorted(float(torch.tensor(list(im.convert("L").getdata())).float().mean()) for im in everything[1])
    threshold = levels[len(levels) // 2]  # about half pass
    passes, kept, texts = bench.collect(pipe, records, n=4, keep=1, reward="x", threshold=threshold, steps=2,
                                      seed=0, batch=8)
    assert everything[0] == [4, 4, 4] and len(everything[1]) == 12
    assert sum(passes) == sum(v >= threshold for v in levels) and 0 < sum(passes) < 12
    assert len(set(texts)) == len(texts) == sum(c > 0 for c in passes)  # one image per prompt with a pass
    for image, text in zip(kept, texts, strict=True):  # each the brightest of its prompt's four
        group = [im for im, t in zip(everything[1], everything[2], strict=True) if t == text]
        assert list(image.getdata()) == list(max(group, key=lambda im: brightness([im], [], []).scores[0]).getdata())
    again = bench.collect(pipe, records, n=4, keep=1, reward="x", threshold=threshold, steps=2, seed=0, batch=8)
    assert again[0] == passes and [list(im.getdata()) for im in again[1]] == [list(im.getdata()) for im in kept]


def test_self_fit_benchmark_fits_the_kept_images_and_saves_the_model(tmp_path, tiny_model, prompts, capsys):
    bench = _benchmark("self_fit")
    out = tmp_path / "fit"
    summary = bench.main([str(tiny_model), "--prompts", str(prompts), "--count", "3", "--n", "2", "--keep", "1",
                          "--reward", "rubric_items", "--threshold", "0", "--sample-steps", "2", "--steps", "40",
                          "--lr", "1e-3", "--batch-size", "3", "--ema", "0.5", "--out", str(out),
                          "--threads", str(torch.get_num_threads())])
    assert summary["kept"] == summary["taught_prompts"] == 3 and summary["pass_before"] == 1.0  # scores >= 0
    assert summary["loss_last"] < 0.8 * summary["loss_first"]  # it learns the kept images
    assert json.loads((out / "summary.json").read_text()) == summary
    start, tuned = LensPipeline.from_pretrained(tiny_model), LensPipeline.from_pretrained(out)
    assert not torch.equal(start.transformer.img_in.weight, tuned.transformer.img_in.weight)
    assert "lensgen eval shapes --model" in capsys.readouterr().out


def test_updates_per_step_splits_the_samples_into_that_many_optimiser_steps(tmp_path, tiny_model, prompts,
                                                                             monkeypatch):
    trainer = NFTTrainer(config(tmp_path, tiny_model, prompts, "two", 1, "data.images_per_prompt=4",
                                "optim.updates_per_step=2"), progress=False)
    shares = []
    original = trainer._accumulate
    monkeypatch.setattr(trainer, "_accumulate", lambda share, *a: shares.append(share) or original(share, *a))
    metrics = trainer.rl_step()
    ids = [[(s.job.slot, s.job.index) for s in share] for share in shares]
    assert [len(i) for i in ids] == [4, 4] and len(set(ids[0] + ids[1])) == 8  # each sample trained once
    assert metrics["trained"] == 8 and trainer.step == 1
    steps = {float(trainer.optimizer.state[p]["step"]) for p in trainer.policy.trainable}
    assert steps == {2.0}  # two Adam steps in one RL step


def _random_pipeline(path: Path, seed: int, num_layers: int = 1) -> Path:
    torch.manual_seed(seed)
    transformer = LensTransformer2DModel(replace(preset("shapes-tiny"), num_layers=num_layers, num_attention_heads=1))
    LensPipeline(transformer, build_codec({"backend": "flux2-vae"}), build_text_encoder({"backend": "minilm"}),
                 PipelineDefaults(height=32, width=32, steps=3, cfg=1.0, max_side=128, schedule="train"),
                 name=f"random {seed}").save_pretrained(path)
    return path


def test_kl_pulls_toward_another_models_guided_velocity(tmp_path, tiny_model, prompts):
    """model.reference_from and optim.kl_guidance: the KL target is the other model's CFG velocity, exactly
    as the sampler guides (the empty prompt as the unconditional); by default the policy's own start."""
    other = _random_pipeline(tmp_path / "other", seed=1)
    guided = NFTTrainer(config(tmp_path, tiny_model, prompts, "guided", 1, f"model.reference_from={other}",
                               "optim.kl_guidance=3.0", "optim.kl_weight=1.0"), progress=False)
    plain = NFTTrainer(config(tmp_path, tiny_model, prompts, "plain", 1), progress=False)
    texts = ["a photo of a red circle", "two blue squares"]
    feats, mask = guided._features(texts)
    empty, empty_mask = guided._features(["", ""])
    grid = (4, 6)
    x_t = torch.randn(2, 24, guided.codec.token_channels, generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor([0.3, 0.8])
    reference = LensTransformer2DModel.from_pretrained(other / "transformer").eval()
    with torch.no_grad():
        expected = guided_velocity(reference(x_t, feats, sigma, grid, mask), reference(x_t, empty, sigma, grid,
                                                                                       empty_mask), 3.0)
        own = plain.policy(x_t, feats, sigma, grid, mask)
    assert torch.allclose(guided.reference_velocity(x_t, feats, mask, sigma, grid), expected, atol=1e-5)
    given = guided.reference_velocity(x_t, feats, mask, sigma, grid, (empty, empty_mask))  # as _accumulate calls it
    assert torch.allclose(given, expected, atol=1e-5)
    assert not torch.allclose(expected, reference(x_t, feats, sigma, grid, mask), atol=1e-3)  # guidance acts
    assert torch.allclose(plain.reference_velocity(x_t, feats, mask, sigma, grid), own, atol=1e-6)
    metrics = guided.rl_step()
    assert metrics["kl"] > 1e-4  # the policy is not the reference: the pull is live from the first step


def test_kl_classifier_adds_its_guidance_toward_each_rubric_below_max_sigma(tmp_path, tiny_model, prompts):
    """optim.kl_classifier: the KL target is the reference's velocity plus the latent classifier's guidance
    toward each sample's rubric, only at levels up to optim.kl_classifier_max_sigma; a step trains on it."""
    plain = NFTTrainer(config(tmp_path, tiny_model, prompts, "plain", 1, "optim.kl_weight=1.0"), progress=False)
    torch.manual_seed(0)
    classifier = LatentClassifier(LatentClassifierConfig(channels=plain.codec.token_channels, width=16, depth=1))
    classifier.save_pretrained(tmp_path / "clf")
    more = ("optim.kl_weight=1.0", f"optim.kl_classifier={tmp_path / 'clf'}", "optim.kl_classifier_scale=4.0",
            "optim.kl_classifier_max_sigma=0.9")
    guided = NFTTrainer(config(tmp_path, tiny_model, prompts, "guided", 1, *more), progress=False)
    texts, rubrics = [guided.prompts[i].prompt for i in (0, 1)], [guided.rubrics[i] for i in (0, 1)]
    feats, mask = guided._features(texts)
    grid, sigma = (4, 6), torch.tensor([0.3, 0.95])
    x_t = torch.randn(2, 24, guided.codec.token_channels, generator=torch.Generator().manual_seed(0))
    base = plain.reference_velocity(x_t, feats, mask, sigma, grid)
    got = guided.reference_velocity(x_t, feats, mask, sigma, grid, rubrics=rubrics)
    expected = base + guidance(guided.classifier, x_t, sigma, grid, rubrics, 4.0, 0.9)
    assert torch.allclose(got, expected, atol=1e-6)
    assert not torch.allclose(got[0], base[0], atol=1e-4) and torch.equal(got[1], base[1])
    assert torch.equal(guided.reference_velocity(x_t, feats, mask, sigma, grid), base)  # no rubrics: no guidance
    assert guided.rl_step()["kl"] > 0  # the policy starts as the reference: only the guidance separates them
    with pytest.raises(UserError, match="optim.kl_classifier"):
        config(tmp_path, tiny_model, prompts, "x", 1, "optim.kl_weight=0", f"optim.kl_classifier={tmp_path / 'clf'}")
    LatentClassifier(LatentClassifierConfig(channels=plain.codec.token_channels + 1, width=16, depth=1)
                     ).save_pretrained(tmp_path / "other")
    with pytest.raises(UserError, match="-channel latents"):
        NFTTrainer(config(tmp_path, tiny_model, prompts, "z", 1, "optim.kl_weight=1.0",
                          f"optim.kl_classifier={tmp_path / 'other'}"), progress=False)
    with pytest.raises(UserError, match="not a latent classifier folder"):
        NFTTrainer(config(tmp_path, tiny_model, prompts, "y", 1, "optim.kl_weight=1.0",
                          f"optim.kl_classifier={tmp_path}"), progress=False)


def test_sample_classifier_scale_guides_the_collection_toward_each_prompts_words(tmp_path, tiny_model, prompts):
    """sample.classifier_scale: the collected images are what the classifier-guided sampler draws, for the
    prompts whose words it reads (as the shipped pipeline guides); the others are sampled as before."""
    from lensgen.inference.classifier_guidance import prompt_rubric

    torch.manual_seed(0)
    channels = build_codec({"backend": "flux2-vae"}).token_channels
    LatentClassifier(LatentClassifierConfig(channels=channels, width=16, depth=1)).save_pretrained(tmp_path / "clf")
    more = ("optim.kl_weight=1.0", f"optim.kl_classifier={tmp_path / 'clf'}", "data.prompts_per_step=4")
    unguided = NFTTrainer(config(tmp_path, tiny_model, prompts, "unguided", 1, *more), progress=False)
    guided = NFTTrainer(config(tmp_path, tiny_model, prompts, "guided", 1, *more, "sample.classifier_scale=1e3",
                               "sample.classifier_max_sigma=0.95"), progress=False)

    def collected(trainer):
        c = trainer.cfg
        jobs = plan_jobs(trainer.sampler.next(), c.data.images_per_prompt, c.data.buckets_per_prompt, trainer.table,
                         c.optim.seed, trainer.step, trainer.bucket_choices)
        return trainer.collect(jobs)

    readable = 0
    for a, b in zip(collected(unguided), collected(guided)):
        assert a.job == b.job
        rubric = prompt_rubric(unguided.prompts[a.job.prompt].prompt)
        if rubric and rubric["expected"]:
            readable += 1
            assert not torch.allclose(a.tokens, b.tokens, atol=1e-4)
        else:
            assert torch.equal(a.tokens, b.tokens)
    assert readable > 0
    assert math.isfinite(guided.rl_step()["grad_norm"])  # a step trains on the guided collection
    with pytest.raises(UserError, match="sample.classifier_scale"):
        config(tmp_path, tiny_model, prompts, "x", 1, "sample.classifier_scale=5")  # no optim.kl_classifier


def test_reference_from_refuses_lora_and_another_architecture(tmp_path, tiny_model, prompts):
    other = _random_pipeline(tmp_path / "deeper", seed=1, num_layers=2)
    with pytest.raises(UserError, match=r"num_layers 2 \(the policy: 1\)"):
        NFTTrainer(config(tmp_path, tiny_model, prompts, "deeper", 1, f"model.reference_from={other}",
                          "optim.kl_weight=1.0"), progress=False)
    with pytest.raises(UserError, match="model.reference_from"):
        config(tmp_path, tiny_model, prompts, "lora", 1, f"model.reference_from={tiny_model}", "model.lora_rank=4")
    with pytest.raises(UserError, match="optim.kl_guidance"):
        config(tmp_path, tiny_model, prompts, "nokl", 1, "optim.kl_guidance=3.0", "optim.kl_weight=0")


def test_reward_shape_credit_reaches_the_rubric_rewards(tmp_path, tiny_model, prompts):
    with pytest.raises(UserError, match="reward.shape_credit.*fixed or pair"):
        config(tmp_path, tiny_model, prompts, "credit", 1, "reward.shape_credit=wide")
    trainer = NFTTrainer(config(tmp_path, tiny_model, prompts, "pair", 1, "reward.shape_credit=pair"), progress=False)
    assert {reward.shape_credit for reward, _ in trainer.reward.components.values()} == {"pair"}


def test_data_sizes_restrict_collection_to_those_buckets(tmp_path, tiny_model, prompts):
    with pytest.raises(UserError, match=r"data.sizes.*\[32, 32\]"):
        config(tmp_path, tiny_model, prompts, "bad", 1, "data.bases=[32, 48]", "data.sizes=[[50, 50]]")
    sizes = ["data.bases=[32, 48]", "data.sizes=[[32, 32], [48, 24]]", "data.buckets_per_prompt=2"]
    trainer = NFTTrainer(config(tmp_path, tiny_model, prompts, "sizes", 1, *sizes), progress=False)
    seen = {(trainer.table[job.bucket].height, trainer.table[job.bucket].width)
            for step in range(6) for job in plan_jobs([0, 1], 4, 2, trainer.table, 0, step, trainer.bucket_choices)}
    assert seen == {(32, 32), (48, 24)}
    everywhere = {job.bucket for step in range(6) for job in plan_jobs([0, 1], 4, 2, trainer.table, 0, step)}
    assert len(everywhere) > 2  # without sizes the whole table is drawn from


def test_group_spread_metric_ignores_the_spread_between_prompts():
    from lensgen.rl.trainer import _group_spreads

    rewards, groups = torch.tensor([0.9, 0.7, 0.1, 0.1, 5.0, 0.3]), torch.tensor([0, 0, 1, 1, 1, 2])
    valid = torch.tensor([True, True, True, True, False, False])  # an invalid sample counts in no spread
    (n0, s0), (n1, s1), (n2, s2) = _group_spreads(rewards, groups, valid)
    assert (n0, n1, n2) == (2, 2, 0) and s0 == pytest.approx(0.1) and s1 == 0.0 and s2 == 0.0


def test_lora_trains_only_adapters_and_exports_the_merged_model(tmp_path, prompts):
    trainer = NFTTrainer(config(tmp_path, SHIPPED, prompts, "lora", 1, "model.lora_rank=4"), progress=False)
    model = trainer.policy.model
    base = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    assert trainer.policy.trainable and all(".lora_" in n for n in trainer.policy.names)
    x, txt, s = torch.randn(2, 16, 16), torch.randn(2, 5, 4, 384), torch.tensor([0.3, 0.8])
    trainer.rl_step()
    assert all(torch.equal(p, base[n]) for n, p in model.named_parameters() if n in base)  # the base is frozen
    with torch.no_grad():
        reference = LensTransformer2DModel.from_pretrained(SHIPPED / "transformer")(x, txt, s, (4, 4))
        torch.testing.assert_close(trainer.policy.ref(x, txt, s, (4, 4)), reference)  # adapters off = the base
        assert not torch.allclose(trainer.policy(x, txt, s, (4, 4)), reference)  # the adapters learnt something
        merged = LensTransformer2DModel(model.config)
        merged.load_state_dict(trainer.policy.merged_state_dict(model.state_dict()))
        torch.testing.assert_close(merged(x, txt, s, (4, 4)), trainer.policy(x, txt, s, (4, 4)), atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_lens_config_runs_one_step_of_its_batch_shape_on_the_tiny_model(tmp_path, tiny_model, prompts):
    """configs/rl-lens-3.8b.yaml: 48 prompts x 24 images over three buckets, on the tiny random model."""
    cfg = load_rl_config(CONFIGS / "rl-lens-3.8b.yaml", [
        f"out_dir={tmp_path / 'lens'}", f"model.init_from={tiny_model}", f"data.prompts={prompts}",
        "optim.steps=1", "data.bases=[32, 48]", "data.multiple=8", "reward.weights={rubric: 1.0}",
        "sample.steps=2", "sample.train_levels=1", "log.eval_every=0", "log.tensorboard=false",
        "system.device=cpu", "system.precision=fp32", "system.fsdp=false", "system.activation_checkpointing=false",
        "system.compile=false"])
    assert (cfg.data.prompts_per_step, cfg.data.images_per_prompt) == (48, 24)
    trainer = NFTTrainer(cfg, progress=False)
    metrics = trainer.rl_step()
    assert metrics["images"] == 48 * 24 and metrics["trained"] == 48 * 24


@pytest.mark.slow
def test_torchrun_two_ranks_shard_the_step_and_agree(tmp_path, prompts):
    """Two gloo ranks with FSDP2 split each step's images; both end with the same weights, and the step is
    the one a single process takes (same images and rewards, same update up to float reordering)."""
    out = tmp_path / "dist"
    args = [f"model.init_from={SHIPPED}", f"data.prompts={prompts}", "optim.steps=1", *TINY,
            "data.prompts_per_step=3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                    "-m", "lensgen.cli", "rl", "--quiet", "--config", str(CONFIGS / "rl-shapes.yaml"),
                    f"--set=out_dir={out}", "--set=system.fsdp=true", *(f"--set={a}" for a in args)],
                   check=True, env=env, timeout=600)
    ranks = [json.loads((out / "ranks" / f"rank{r}.json").read_text()) for r in (0, 1)]
    for key in ("policy_sq_sum", "old_sq_sum", "ema_sq_sum"):
        assert ranks[0][key] == ranks[1][key], key
    dist_metrics = lines(out)
    assert [m["images"] for m in dist_metrics] == [6]  # the group statistics gathered over both ranks
    single = tmp_path / "single"
    NFTTrainer(load_rl_config(CONFIGS / "rl-shapes.yaml", [*args, f"out_dir={single}"]), progress=False).run()
    first, one = dist_metrics[0], lines(single)[0]
    # the same images up to float reordering in differently sized batches, so the same (continuous) rewards
    assert first["reward_mean"] == pytest.approx(one["reward_mean"], rel=1e-4)
    for key in ("policy_loss", "grad_norm"):
        assert first[key] == pytest.approx(one[key], rel=1e-3), key
    alone = json.loads((single / "ranks" / "rank0.json").read_text())
    assert ranks[0]["policy_sq_sum"] == pytest.approx(alone["policy_sq_sum"], rel=1e-6)
    assert (out / "final" / "model_index.json").is_file() and len(load_rl_prompts(prompts)) == 40
