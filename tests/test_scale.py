"""Full scale without a cluster: meta-device build + shard-by-shard init under torchrun, and the memory
planner held against the real memory of the same step on CPU (FSDP2, two gloo ranks)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lensgen.train.config import load_config
from lensgen.train.planner import GIB, Planner

CONFIG = """
out_dir: unused
model: {preset: shapes-tiny, overrides: {num_layers: 2}}
data: {bases: [64, 128], multiple: 8}
system: {precision: fp32, threads: 1}
"""
RESOLUTION, BATCH, TEXT_TOKENS = 128, 4, 32  # the step whose real memory the planner must predict
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
       "TRANSFORMERS_OFFLINE": "1"}


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """What each of two torchrun ranks saw: init/load equality and the measured memory of a real step."""
    out = tmp_path_factory.mktemp("fsdp")
    config = out / "tiny.yaml"
    config.write_text(CONFIG)
    worker = Path(__file__).parent / "fsdp_scale_worker.py"
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                    str(worker), str(config), str(out), str(RESOLUTION), str(BATCH), str(TEXT_TOKENS)],
                   check=True, env=ENV, timeout=900)
    return config, [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]


@pytest.mark.slow
def test_meta_init_then_shards_equal_a_plain_build_and_a_load(two_ranks):
    _, ranks = two_ranks
    for r in ranks:
        assert r["world_size"] == 2
        assert r["init_identical"]  # meta -> fully_shard -> to_empty -> init_shards == plain build, same seed
        assert r["rng_in_step"]  # and the global RNG is left where a plain build leaves it
        assert r["local_fraction"] == pytest.approx(0.5, abs=0.01)  # each rank holds half
        assert r["load_identical"]  # an int8 export read shard by shard == from_pretrained


@pytest.mark.slow
def test_text_encoder_sharded_across_ranks_gives_the_same_features_and_trains(two_ranks):
    _, ranks = two_ranks
    for r in ranks:
        assert r["text_encoder_identical"]
        assert r["text_encoder_local_fraction"] == pytest.approx(0.5, abs=0.01)
        assert len(r["sharded_text_losses"]) == 3 and all(0 < x < 10 for x in r["sharded_text_losses"])
    assert ranks[0]["sharded_text_losses"] == ranks[1]["sharded_text_losses"]  # the loss is all-reduced


@pytest.mark.slow
def test_planner_matches_the_real_peak_of_the_same_step_within_10_percent(two_ranks):
    config_path, ranks = two_ranks
    planner = Planner(load_config(config_path), 2, text_tokens=TEXT_TOKENS, text_encoder="precomputed")
    plans = {}
    for ckpt in (False, True):
        plan = planner.plan_step(RESOLUTION, BATCH, ckpt)
        real = ranks[0][f"measured_ckpt_{int(ckpt)}"]
        assert plan.peak == pytest.approx(real["total"], rel=0.10), (ckpt, vars(plan.memory), real)
        # resident state is exact: optimiser moments and fp32 EMA shards
        assert plan.memory.optimizer == real["optimizer"] and plan.memory.ema == real["ema"]
        plans[ckpt] = plan
    assert plans[True].memory.activations < plans[False].memory.activations  # checkpointing saves memory


def test_largest_batch_from_two_steps():
    from lensgen.train.planner import Memory, StepPlan, largest_batch

    def step(batch, activations, text_encoder=3 * GIB):  # 1 GiB resident encoder, 2 GiB gathered while encoding
        return StepPlan(1024, batch, True, Memory(parameters=GIB, optimizer=2 * GIB, activations=activations,
                                                  text_encoder=text_encoder), 0, text_resident=GIB)

    # the line through the steps' own peaks (4 + 2b GiB), not through the encoder's transient
    assert largest_batch(step(2, 4 * GIB), step(4, 8 * GIB), 40 * GIB) == 18
    # not affine (more memory at the smaller batch): activations proportional to the larger step's batch
    assert largest_batch(step(4, 12 * GIB), step(8, 8 * GIB), 40 * GIB) == 36


def test_planner_leaves_dtensor_sharding_propagation_out_of_the_peak(tmp_path):
    """DTensor finds an op's output shape by running it on stand-ins of its inputs at their global shape,
    under the active fake mode: the planner's own, so FSDPMemTracker counted them. At clip_grad_norm_'s
    _foreach_norm that is every gradient at full size in fp32 at once (15.3 GiB for lens-3.8b, which made
    batch 4 plan above batch 8), and only in the first step planned in the process (DTensor caches it).
    Here (64 px, batch 1, few activations) that phantom would set the peak."""
    from lensgen.train.materialize import meta_transformer

    config = tmp_path / "tiny.yaml"
    config.write_text(CONFIG.replace("num_layers: 2", "num_layers: 4").replace("fp32", "bf16"))
    planner = Planner(load_config(config), 8, text_tokens=8, text_encoder="precomputed")
    full_fp32_grads = 4 * sum(p.numel() for p in meta_transformer(planner.model_config).parameters())
    first = planner.plan_step(64, 1, True)
    assert first.memory.activations < full_fp32_grads / 4, vars(first.memory)
    # first in the process or not, the same plan (to within DTensor's small cached-path differences)
    assert planner.plan_step(64, 1, True).peak == pytest.approx(first.peak, rel=0.01)


def test_plan_command_lists_the_planners_text_encoder_modes():
    from lensgen.train import plan_cli, planner

    assert plan_cli.TEXT_ENCODER_MODES == planner.TEXT_ENCODER_MODES


def test_planner_peak_memory_is_its_own_not_what_the_parent_held_when_it_forked():
    """ru_maxrss survives exec, so a planner started from a large process (a test session) would report that
    process's size as its own; the planner reads its own peak."""
    code = ("import resource; from lensgen.train.planner import peak_rss_bytes; "
            "print(peak_rss_bytes(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)")
    ballast = bytearray(1024**3)  # the parent holds 1 GiB when it forks the child
    ballast[::4096] = b"\x01" * len(range(0, len(ballast), 4096))
    own, inherited = map(int, subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True,
                                             check=True).stdout.split())
    del ballast
    assert inherited > GIB and own < GIB / 2, (own, inherited)


@pytest.mark.slow
def test_plan_command_simulates_a_large_model_without_allocating_it(tmp_path):
    """lens-3.8b's width and GPT-OSS-20B's shape (one block, to keep the test short): planned peaks of many
    GiB while the planning process stays small."""
    out = tmp_path / "plan.json"
    cmd = [sys.executable, "-m", "lensgen.cli", "plan", "--config", "configs/lens-3.8b.yaml", "--gpus", "8",
           "--gpu-mem", "80", "--resolutions", "1024", "--batches", "4,8", "--checkpointing", "off",
           "--set", "model.overrides={num_layers: 1}", "--no-flop-count", "--json", str(out), "-q"]
    root = Path(__file__).parent.parent
    done = subprocess.run(cmd, env=ENV, cwd=root, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    assert "per-GPU peak memory" in done.stdout and "largest batch per GPU that fits" in done.stdout
    plan = json.loads(out.read_text())
    # the simulated transformer step alone (text encoder aside) holds more than the whole planning process:
    # had anything been materialised, the process would have grown past it
    simulated = [s["peak_gib"] - s["memory_gib"]["text_encoder"] for s in plan["steps"]]
    assert min(simulated) > plan["host_rss_gib"] and plan["host_rss_gib"] < 2.0, (simulated, plan["host_rss_gib"])
    te = plan["text_encoder"]  # GPT-OSS-20B: ~20.3B parameters without the LM head, 1/8 of them per GPU in bf16
    assert 20e9 < te["params"] < 21e9
    assert te["resident_gib"]["sharded"] == pytest.approx(te["params"] * 2 / 8 / GIB, rel=1e-6)
    assert te["resident_gib"]["node-sharded"] == te["resident_gib"]["sharded"]  # 8 GPUs: one node
    assert all(s["memory_gib"]["text_encoder"] >= te["resident_gib"]["sharded"] for s in plan["steps"])
    best = plan["largest"][0]["step"]
    assert best["peak_gib"] <= 80 and best["batch"] >= 8
    bad = subprocess.run([*cmd[:7], "0", *cmd[8:]], env=ENV, cwd=root, capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and "--gpus must be at least 1" in bad.stderr


def test_plan_check_benchmark_holds_the_plan_against_a_real_single_rank_step(tmp_path, capsys):
    """benchmarks/plan_check.py, the GPU check's script, on this CPU: the same build (meta, FSDP2 over one rank),
    the planner's prediction and the measured step agree within 10 %, and the speed figures come out."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("plan_check", Path(__file__).parent.parent / "benchmarks" / "plan_check.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    config = tmp_path / "tiny.yaml"
    config.write_text(CONFIG)
    out = tmp_path / "check.json"
    for ckpt in ("off", "on"):
        result = bench.main(["--config", str(config), "--device", "cpu", "--resolution", "128", "--batch", "4",
                             "--text-tokens", str(TEXT_TOKENS), "--checkpointing", ckpt, "--steps", "1",
                             "--peak-tflops", "1", "--json", str(out)])
        assert result["plan_vs_measured"] == pytest.approx(1.0, abs=0.10), result
        assert result["planned"]["optimizer"] == result["measured"]["optimizer"] > 0  # AdamW moments: exact
        assert result["planned"]["ema"] == result["measured"]["ema"] > 0
        assert result["step_seconds"] > 0 and result["mfu"] == pytest.approx(result["achieved_tflops"])
        assert json.loads(out.read_text())["checkpointing"] is (ckpt == "on")
        assert "within 10 %" in capsys.readouterr().out
