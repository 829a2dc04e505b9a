"""Latent codecs: FLUX.2 patchify order and BatchNorm normalisation against diffusers' Flux2 pipeline, exact
inverses, encode/decode on a tiny random AutoencoderKLFlux2 saved and loaded from a folder, the pixel codec."""

import json

import pytest
import torch

from lensgen.errors import UserError
from lensgen.models.vae import (
    CONFIG_NAME,
    Flux2VAECodec,
    LatentCodec,
    PixelCodec,
    build_codec,
    load_codec,
    patchify,
    unpatchify,
)


def test_patchify_channel_order_and_exact_inverse():
    from diffusers import Flux2Pipeline

    x = torch.randn(2, 32, 6, 10)
    p = patchify(x)
    assert p.shape == (2, 128, 3, 5)
    assert torch.equal(p, Flux2Pipeline._patchify_latents(x))
    assert torch.equal(unpatchify(p), x) and torch.equal(Flux2Pipeline._unpatchify_latents(p), x)
    # channel c*4 + i*2 + j holds x[:, c, i::2, j::2]
    assert torch.equal(p[:, 4 * 7 + 2 * 1 + 0], x[:, 7, 1::2, 0::2])
    y = torch.randn(1, 3, 16, 24)
    assert patchify(y, 8).shape == (1, 192, 2, 3) and torch.equal(unpatchify(patchify(y, 8), 8), y)
    with pytest.raises(ValueError):
        patchify(torch.randn(1, 3, 5, 4))


@pytest.fixture(scope="module")
def vae_folder(tmp_path_factory):
    from diffusers import AutoencoderKLFlux2

    torch.manual_seed(0)
    vae = AutoencoderKLFlux2(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                             up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, latent_channels=4,
                             norm_num_groups=4, mid_block_add_attention=False, sample_size=32)
    # non-trivial BatchNorm statistics, so the normalisation is really exercised
    vae.bn.running_mean.copy_(torch.randn(16))
    vae.bn.running_var.copy_(torch.rand(16) + 0.5)
    folder = tmp_path_factory.mktemp("flux2_vae")
    vae.eval().save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def codec(vae_folder):
    return load_codec(vae_folder)


def _reference_encode(vae, images):
    """What diffusers' Flux2Pipeline._encode_vae_image computes."""
    from diffusers import Flux2Pipeline

    z = Flux2Pipeline._patchify_latents(vae.encode(images).latent_dist.mode())
    mean = vae.bn.running_mean.view(1, -1, 1, 1)
    std = torch.sqrt(vae.bn.running_var.view(1, -1, 1, 1) + vae.config.batch_norm_eps)
    return (z - mean) / std


def test_flux2_codec_matches_the_flux2_pipeline(codec):
    assert isinstance(codec, Flux2VAECodec)
    assert (codec.spatial_factor, codec.token_channels) == (4, 16)  # 2x VAE (2 blocks), then 2x2 patches
    assert not any(p.requires_grad for p in codec.parameters()) and not codec.train().training
    images = torch.rand(2, 3, 16, 24) * 2 - 1
    with torch.no_grad():
        expected = _reference_encode(codec.vae, images)
        tokens = codec.encode(images)
        assert tokens.shape == (2, 16, 4, 6) and tokens.dtype == torch.float32
        torch.testing.assert_close(tokens, expected, atol=1e-5, rtol=1e-5)
        # decode: the pipeline's inverse (x * std + mean, then unpatchify) and the VAE decoder, clamped
        from diffusers import Flux2Pipeline

        mean = codec.vae.bn.running_mean.view(1, -1, 1, 1)
        std = torch.sqrt(codec.vae.bn.running_var.view(1, -1, 1, 1) + codec.vae.config.batch_norm_eps)
        ref = codec.vae.decode(Flux2Pipeline._unpatchify_latents(tokens * std + mean)).sample.clamp(-1, 1)
        decoded = codec.decode(tokens)
    assert decoded.shape == images.shape
    torch.testing.assert_close(decoded, ref, atol=1e-5, rtol=1e-5)


def test_flux2_normalisation_is_an_exact_inverse(codec):
    tokens = torch.randn(3, 16, 5, 7)
    torch.testing.assert_close(codec.normalize(codec.denormalize(tokens)), tokens, atol=1e-6, rtol=1e-6)
    latents = torch.randn(3, 4, 10, 14)
    torch.testing.assert_close(unpatchify(codec.denormalize(codec.normalize(patchify(latents)))), latents,
                               atol=1e-5, rtol=1e-6)


def test_flux2_sampling_option(codec):
    images = torch.rand(1, 3, 8, 8) * 2 - 1
    mode = codec.encode(images)
    assert torch.equal(codec.encode(images), mode)  # the mode is deterministic
    a = codec.encode(images, sample=True, generator=torch.Generator().manual_seed(1))
    b = codec.encode(images, sample=True, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.allclose(a, mode)


def test_flux2_save_and_load(codec, tmp_path):
    codec.save_pretrained(tmp_path / "vae")
    assert json.loads((tmp_path / "vae" / CONFIG_NAME).read_text()) == {"backend": "flux2-vae", "path": ".",
                                                                        "sample": False}
    again = LatentCodec.from_pretrained(tmp_path / "vae")
    images = torch.rand(1, 3, 8, 12) * 2 - 1
    assert torch.equal(again.encode(images), codec.encode(images))
    assert build_codec(codec.config_dict()).token_channels == 16


def test_pixel_codec_exact_round_trip(tmp_path):
    codec = PixelCodec()
    assert (codec.spatial_factor, codec.token_channels) == (8, 192)
    images = torch.rand(2, 3, 24, 40) * 2 - 1
    tokens = codec.encode(images)
    assert tokens.shape == (2, 192, 3, 5)
    assert torch.equal(tokens[:, :64].reshape(2, 8, 8, 3, 5).permute(0, 3, 1, 4, 2).reshape(2, 24, 40), images[:, 0])
    assert torch.equal(codec.decode(tokens), images)
    small = build_codec({"backend": "pixel", "patch_size": 4})
    assert (small.spatial_factor, small.token_channels) == (4, 48)
    assert torch.equal(small.decode(small.encode(images)), images)
    small.save_pretrained(tmp_path)
    assert load_codec(tmp_path).config_dict() == {"backend": "pixel", "patch_size": 4}
    with pytest.raises(ValueError, match="multiple of 8"):
        codec.encode(torch.zeros(1, 3, 20, 16))
    with pytest.raises(ValueError, match="192"):
        codec.decode(torch.zeros(1, 48, 2, 2))


@pytest.mark.parametrize("config,message", [
    ({"backend": "sd-vae"}, "unknown codec backend"),
    ({"backend": "flux2-vae", "path": "/nonexistent/vae"}, "missing or has no config.json"),
    ({"backend": "pixel", "patch": 8}, "unknown pixel codec field"),
    ({"backend": "pixel", "patch_size": 0}, "positive integer"),
])
def test_bad_configs(config, message):
    with pytest.raises(UserError, match=message):
        build_codec(config)


def test_flux2_vae_without_a_path_is_the_shipped_shapes_vae():
    from lensgen.models.vae import SHAPES_VAE_DIR

    codec, shipped = build_codec({"backend": "flux2-vae"}), load_codec(SHAPES_VAE_DIR)
    assert codec.path == str(SHAPES_VAE_DIR) and (codec.spatial_factor, codec.token_channels) == (8, 16)
    for a, b in zip(codec.state_dict().values(), shipped.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_load_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_codec(tmp_path / "missing")
    with pytest.raises(UserError, match="holds no codec"):
        load_codec(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL"}))
    with pytest.raises(UserError, match="not a FLUX.2 VAE"):
        load_codec(tmp_path)
