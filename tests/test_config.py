"""One config loader for every command: the same --config / --set syntax, the same checks, the same errors."""

from dataclasses import asdict
from pathlib import Path

import pytest

from lensgen import cli
from lensgen.config import apply_override, load_config, section_overrides
from lensgen.data.caption.config import CaptionConfig
from lensgen.data.curate.config import CurateConfig
from lensgen.errors import UserError
from lensgen.rl.config import RLConfig
from lensgen.train.config import TrainConfig
from lensgen.train.shapes_vae import VAETrainConfig

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def test_override_syntax_sets_yaml_values_and_creates_sections():
    data = {"optim": None}
    for item in ("optim.lr=1e-4", "data.bases=[32, 48]", "model.codec={backend: flux2-vae}", "out_dir=runs/x"):
        apply_override(data, item)
    apply_override(data, ("optim.steps", 7))
    # PyYAML reads 1e-4 (no dot) as a string; from_mapping makes it a float where a float is wanted
    assert data == {"optim": {"lr": "1e-4", "steps": 7}, "data": {"bases": [32, 48]},
                    "model": {"codec": {"backend": "flux2-vae"}}, "out_dir": "runs/x"}
    with pytest.raises(UserError, match="SECTION.FIELD=VALUE"):
        apply_override(data, "optim.lr")
    with pytest.raises(UserError, match="out_dir is not a section"):
        apply_override(data, "out_dir.x=1")
    with pytest.raises(UserError, match="not valid YAML"):
        apply_override(data, "optim.betas=[0.9")
    assert section_overrides({"run": {"workers": 2}, "model": "m"}) == [("run.workers", 2), ("model", "m")]
    assert load_config(TrainConfig, None, ["optim.lr=1e-4"]).optim.lr == 1e-4


@pytest.mark.parametrize("cls,path", [
    (TrainConfig, "shapes-tiny.yaml"), (TrainConfig, "lens-3.8b.yaml"), (VAETrainConfig, "shapes-vae.yaml"),
    (CurateConfig, "curate-default.yaml"), (CaptionConfig, "caption-example.yaml"),
    (RLConfig, "rl-shapes.yaml"), (RLConfig, "rl-backprop-shapes.yaml"),
])
def test_every_shipped_config_loads_and_takes_overrides(cls, path):
    config = load_config(cls, CONFIGS / path)
    first = next(iter(asdict(config)))  # any top-level field: an override reaches it
    again = load_config(cls, CONFIGS / path, [(first, getattr(config, first))])
    assert again == config


def test_documented_defaults_are_the_real_defaults():
    assert load_config(VAETrainConfig, CONFIGS / "shapes-vae.yaml") == VAETrainConfig()
    assert load_config(CurateConfig, CONFIGS / "curate-default.yaml") == CurateConfig()


@pytest.mark.parametrize("argv,message", [
    (["train", "--config", str(CONFIGS / "shapes-tiny.yaml"), "--set", "optim.lr=fast"],
     "shapes-tiny.yaml.optim.lr: expected a number, got 'fast'"),
    (["train", "--config", str(CONFIGS / "shapes-tiny.yaml"), "--steps", "0"], "optim.steps: expected a positive"),
    (["train-vae", "--set", "lr=-1"], "config: lr: expected a number >= 0"),
    (["train-vae", "--set", "learning_rate=1"], "unknown field(s) learning_rate"),
    (["data", "curate", "--set", "run.workers=-1", "in", "out"], "config: run.workers: expected >= 0"),
    (["data", "caption", "--set", "concurrency=0", "in", "out"], "config: concurrency: expected >= 1"),
    (["data", "caption", "--set", "min_words=300", "--set", "max_words=10", "in", "out"],
     "min_words: expected 1 <= min_words <= max_words"),
])
def test_every_command_names_the_bad_field_before_doing_anything(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may be written
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("lensgen: error: ") and message in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_configs_built_in_code_are_checked_too():
    with pytest.raises(UserError, match="concurrency"):
        CaptionConfig(concurrency=0)
    with pytest.raises(UserError, match="brightness: expected 0 <= min_luma < max_luma <= 1"):
        load_config(CurateConfig, None, {"brightness": {"min_luma": 0.9, "max_luma": 0.1}})
