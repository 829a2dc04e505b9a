"""Weight storage formats: fp32 exact, bf16 and int8 (per-row scales) close, smaller, and loaded as float32."""

import pytest
import torch

from lensgen.models.transformer import LensTransformer2DModel, preset
from lensgen.models.weight_storage import pack_state_dict, unpack_state_dict


def test_int8_rows_round_trip_within_half_a_step():
    torch.manual_seed(0)
    state = {"w": torch.randn(64, 512) * torch.logspace(-3, 1, 64)[:, None], "b": torch.randn(64)}
    packed = pack_state_dict(state, "int8")
    assert packed["w"].dtype == torch.int8 and packed["b"].dtype == torch.float32
    back = unpack_state_dict(packed)
    step = state["w"].abs().amax(1, keepdim=True) / 127
    assert torch.all((back["w"] - state["w"]).abs() <= step / 2 + 1e-7)  # each row keeps its own scale
    assert torch.equal(back["b"], state["b"]) and set(back) == {"w", "b"}
    with pytest.raises(ValueError, match="int8, int4"):
        pack_state_dict(state, "int2")


def test_int4_groups_round_trip_within_half_a_step_also_for_a_ragged_last_group():
    torch.manual_seed(0)
    w = torch.randn(48, 682) * torch.logspace(-3, 1, 48)[:, None]  # 682 = 10 groups of 64 and one of 42
    packed = pack_state_dict({"w": w, "b": torch.randn(48)}, "int4")
    assert packed["w"].dtype == torch.uint8 and packed["w"].shape == (48, 352)  # 704 columns, two per byte
    assert packed["w.int4_scale"].shape == (48, 11, 2) and packed["b"].dtype == torch.float32
    back = unpack_state_dict(packed)["w"]
    assert back.shape == w.shape and back.dtype == torch.float32
    for g in range(11):
        cols = w[:, 64 * g:64 * (g + 1)]
        step = (cols.amax(1) - cols.amin(1)) / 15  # each group keeps its own step and minimum
        error = (back[:, 64 * g:64 * (g + 1)] - cols).abs().amax(1)
        assert torch.all(error <= 0.51 * step + 1e-7), g


def test_int4_export_loads_one_tensor_at_a_time_as_from_pretrained_does(tmp_path):
    from lensgen.train.materialize import load_shards

    torch.manual_seed(0)
    model = LensTransformer2DModel(preset("shapes-tiny")).eval()
    model.save_pretrained(tmp_path, storage="int4")
    whole = LensTransformer2DModel.from_pretrained(tmp_path)
    torch.manual_seed(1)
    one_by_one = LensTransformer2DModel(preset("shapes-tiny"))
    load_shards(one_by_one, tmp_path)
    for (name, a), b in zip(whole.state_dict().items(), one_by_one.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("storage,max_ratio,atol", [("fp32", 1.0, 0.0), ("bf16", 0.51, 0.05), ("int8", 0.3, 0.05),
                                                     ("int4", 0.15, 0.05)])
def test_transformer_folders_in_each_storage(tmp_path, storage, max_ratio, atol):
    torch.manual_seed(0)
    model = LensTransformer2DModel(preset("shapes-tiny")).eval()
    model.save_pretrained(tmp_path / "fp32")
    model.save_pretrained(tmp_path / storage, storage=storage)
    size = lambda d: (d / "diffusion_pytorch_model.safetensors").stat().st_size  # noqa: E731
    assert size(tmp_path / storage) <= max_ratio * size(tmp_path / "fp32") + 1024
    loaded = LensTransformer2DModel.from_pretrained(tmp_path / storage)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    x, txt = torch.randn(2, 64, model.config.in_channels), torch.randn(2, 7, 4, 384)
    sigma = torch.tensor([0.3, 0.8])
    with torch.no_grad():
        want, got = model(x, txt, sigma, (8, 8)), loaded(x, txt, sigma, (8, 8))
    torch.testing.assert_close(got, want, atol=atol, rtol=0)


def test_a_tuned_model_stored_as_int4_differences_to_its_base_is_closer_than_whole_int8(tmp_path):
    """The shipped RL and Turbo models are stored this way: base + int4(tuned - base), a quarter of fp32."""
    import shutil

    from lensgen.errors import UserError
    from lensgen.train.materialize import load_shards

    torch.manual_seed(0)
    base = LensTransformer2DModel(preset("shapes-tiny")).eval()
    base.save_pretrained(tmp_path / "base" / "transformer", storage="int8")
    base = LensTransformer2DModel.from_pretrained(tmp_path / "base" / "transformer")
    tuned = LensTransformer2DModel(preset("shapes-tiny")).eval()
    with torch.no_grad():  # a few percent away from the base, as RL moves it
        for p, b in zip(tuned.parameters(), base.parameters(), strict=True):
            p.copy_(b + 0.03 * b.abs().mean() * torch.randn_like(b))
    base_dir = tmp_path / "base" / "transformer"
    tuned.save_pretrained(tmp_path / "tuned" / "transformer", storage="int4", delta_from=base_dir)
    tuned.save_pretrained(tmp_path / "whole", storage="int8")
    size = lambda d: (d / "diffusion_pytorch_model.safetensors").stat().st_size  # noqa: E731
    assert size(tmp_path / "tuned" / "transformer") < 0.6 * size(tmp_path / "whole")

    loaded = LensTransformer2DModel.from_pretrained(tmp_path / "tuned" / "transformer")
    whole = LensTransformer2DModel.from_pretrained(tmp_path / "whole")
    params = lambda m: [p.detach() for p in m.parameters()]  # noqa: E731
    error = lambda m: sum(float((a - b).pow(2).sum()) for a, b in zip(params(m), params(tuned)))  # noqa: E731
    assert 0 < error(loaded) < 0.5 * error(whole)
    one_by_one = LensTransformer2DModel(preset("shapes-tiny"))
    load_shards(one_by_one, tmp_path / "tuned" / "transformer")
    for (name, a), b in zip(loaded.state_dict().items(), one_by_one.state_dict().values(), strict=True):
        assert torch.equal(a, b), name

    with pytest.raises(UserError, match="must hold whole weights"):  # no chains of differences
        tuned.save_pretrained(tmp_path / "again", delta_from=tmp_path / "tuned" / "transformer")
    shutil.copytree(tmp_path / "tuned", tmp_path / "elsewhere" / "tuned")
    with pytest.raises(UserError, match="does not exist: keep the two model folders side by side"):
        LensTransformer2DModel.from_pretrained(tmp_path / "elsewhere" / "tuned" / "transformer")


def test_a_copy_of_a_shipped_model_stored_as_differences_still_finds_its_base(tmp_path):
    """Copying the shipped RL model's folder to change its defaults (docs/rl-shapes-measurements.md does) keeps it loadable: the
    base it stores differences to is found by name among the shipped models."""
    import shutil

    from lensgen.inference.pipeline import DEFAULT_MODEL_DIR

    shutil.copytree(DEFAULT_MODEL_DIR, tmp_path / "copy")
    copy = LensTransformer2DModel.from_pretrained(tmp_path / "copy" / "transformer")
    shipped = LensTransformer2DModel.from_pretrained(DEFAULT_MODEL_DIR / "transformer")
    for (name, a), b in zip(copy.state_dict().items(), shipped.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
