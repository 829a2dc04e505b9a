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
    with pytest.raises(ValueError, match="int8"):
        pack_state_dict(state, "int4")


@pytest.mark.parametrize("storage,max_ratio,atol", [("fp32", 1.0, 0.0), ("bf16", 0.51, 0.05), ("int8", 0.3, 0.05)])
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
