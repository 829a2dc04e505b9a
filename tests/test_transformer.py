"""The Lens transformer: released layout (names, shapes, parameter count), the spec's math, mixed sizes."""

import copy
import importlib.util
import math
import re
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lensgen.errors import UserError
from lensgen.models.transformer import (
    LensTransformer2DModel,
    LensTransformerConfig,
    preset,
    timestep_angles,
    timestep_sinusoid,
)

# Expected released layout, written from DESIGN.md: pattern -> shape for lens-3.8b.
W, QKV, MLP, MOD, TXT = 1536, 4608, 4096, 6 * 1536, 2880
BLOCK_KEYS = {
    r"img_mod\.1\.weight": (MOD, W), r"img_mod\.1\.bias": (MOD,),
    r"txt_mod\.1\.weight": (MOD, W), r"txt_mod\.1\.bias": (MOD,),
    r"img_norm1\.weight": (W,), r"img_norm2\.weight": (W,),
    r"txt_norm1\.weight": (W,), r"txt_norm2\.weight": (W,),
    r"attn\.img_qkv\.weight": (QKV, W), r"attn\.img_qkv\.bias": (QKV,),
    r"attn\.txt_qkv\.weight": (QKV, W), r"attn\.txt_qkv\.bias": (QKV,),
    r"attn\.norm_q\.weight": (64,), r"attn\.norm_k\.weight": (64,),
    r"attn\.norm_added_q\.weight": (64,), r"attn\.norm_added_k\.weight": (64,),
    r"attn\.to_out\.0\.weight": (W, W), r"attn\.to_out\.0\.bias": (W,),
    r"attn\.to_add_out\.weight": (W, W), r"attn\.to_add_out\.bias": (W,),
    r"img_mlp\.w1\.weight": (MLP, W), r"img_mlp\.w3\.weight": (MLP, W), r"img_mlp\.w2\.weight": (W, MLP),
    r"txt_mlp\.w1\.weight": (MLP, W), r"txt_mlp\.w3\.weight": (MLP, W), r"txt_mlp\.w2\.weight": (W, MLP),
}
TOP_KEYS = {
    "time_text_embed.timestep_embedder.linear_1.weight": (W, 256),
    "time_text_embed.timestep_embedder.linear_1.bias": (W,),
    "time_text_embed.timestep_embedder.linear_2.weight": (W, W),
    "time_text_embed.timestep_embedder.linear_2.bias": (W,),
    **{f"txt_norm.{i}.weight": (TXT,) for i in range(4)},
    "txt_in.weight": (W, 4 * TXT), "txt_in.bias": (W,),
    "img_in.weight": (W, 128), "img_in.bias": (W,),
    "norm_out.linear.weight": (2 * W, W), "norm_out.linear.bias": (2 * W,),
    "proj_out.weight": (128, W), "proj_out.bias": (128,),
}


@pytest.fixture(scope="module")
def lens_meta():
    with torch.device("meta"):
        return LensTransformer2DModel(preset("lens-3.8b"))


def test_lens_parameter_count(lens_meta):
    assert sum(p.numel() for p in lens_meta.parameters()) == 4_104_225_152


def test_lens_state_dict_matches_released_layout(lens_meta):
    state = {k: tuple(v.shape) for k, v in lens_meta.state_dict().items()}
    expected = dict(TOP_KEYS)
    for i in range(48):
        for pattern, shape in BLOCK_KEYS.items():
            expected[f"transformer_blocks.{i}." + pattern.replace("\\.", ".")] = shape
    assert state == expected
    mod = sum(math.prod(s) for k, s in state.items() if re.search(r"_mod\.1\.", k))
    assert 0.3 < mod / sum(math.prod(s) for s in state.values()) < 0.36  # "a third of them modulation"


def tiny_config(**kw) -> LensTransformerConfig:
    base = dict(num_layers=2, num_attention_heads=2, attention_head_dim=16, patch_size=2, out_channels=4,
                in_channels=16, enc_hidden_dim=12, selected_layer_index=(1, 3), axes_dims_rope=(4, 6, 6),
                mlp_hidden_dim=40)
    base.update(kw)
    return LensTransformerConfig(**base)


def randomised(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights everywhere (norm weights and modulation too), so every path matters."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * (0.3 if p.dim() > 1 else 0.5) + (1.0 if p.dim() == 1 else 0))
    return model.eval()


# ---- an independent reference written from the spec: complex RoPE, explicit softmax attention ----

def ref_rope_positions(h, w, s):
    rows = [r - (h - h // 2) for r in range(h)]
    cols = [c - (w - w // 2) for c in range(w)]
    img = [(0, r, c) for r in rows for c in cols]
    start = max(h // 2, w // 2)
    return img + [(start + k,) * 3 for k in range(s)]


def ref_rotate(x, positions, axes, theta):
    # x: (T, heads, D); complex rotation on consecutive channel pairs
    freqs = []
    for pos in positions:
        f = []
        for a, d in enumerate(axes):
            f += [pos[a] * theta ** (-(2 * i) / d) for i in range(d // 2)]
        freqs.append(f)
    ang = torch.tensor(freqs, dtype=torch.float64)
    rot = torch.polar(torch.ones_like(ang), ang)[:, None, :]
    xc = torch.view_as_complex(x.double().reshape(*x.shape[:-1], -1, 2).contiguous())
    return torch.view_as_real(xc * rot).flatten(-2).float()


def rms(x, weight, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def ref_forward(model, img, txt, sigma, h, w, txt_valid):
    """One sample, unbatched: img (N, C), txt (S, L, D), only the first txt_valid text tokens."""
    cfg = model.config
    sd = {k: v.double() for k, v in model.state_dict().items()}
    lin = lambda x, name, bias=True: x @ sd[name + ".weight"].T + (sd[name + ".bias"] if bias else 0)  # noqa: E731
    txt = txt[:txt_valid].double()
    half = 128
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float64) / half)
    t = torch.cat([torch.cos(1000 * sigma * freqs), torch.sin(1000 * sigma * freqs)])
    temb = lin(F.silu(lin(t, "time_text_embed.timestep_embedder.linear_1")), "time_text_embed.timestep_embedder.linear_2")
    tx = torch.cat([rms(txt[:, i], sd[f"txt_norm.{i}.weight"], 1e-5) for i in range(txt.shape[1])], -1)
    tx = lin(tx, "txt_in")
    x = lin(img.double(), "img_in")
    pos = ref_rope_positions(h, w, tx.shape[0])
    H, D = cfg.num_attention_heads, cfg.attention_head_dim
    for b in range(cfg.num_layers):
        p = f"transformer_blocks.{b}."
        im = lin(F.silu(temb), p + "img_mod.1").chunk(6)
        tm = lin(F.silu(temb), p + "txt_mod.1").chunk(6)
        xi = rms(x, sd[p + "img_norm1.weight"], 1e-6) * (1 + im[1]) + im[0]
        xt = rms(tx, sd[p + "txt_norm1.weight"], 1e-6) * (1 + tm[1]) + tm[0]
        qi, ki, vi = lin(xi, p + "attn.img_qkv").view(-1, 3, H, D).unbind(1)
        qt, kt, vt = lin(xt, p + "attn.txt_qkv").view(-1, 3, H, D).unbind(1)
        e = cfg.qk_norm_eps
        qi, ki = rms(qi, sd[p + "attn.norm_q.weight"], e), rms(ki, sd[p + "attn.norm_k.weight"], e)
        qt, kt = rms(qt, sd[p + "attn.norm_added_q.weight"], e), rms(kt, sd[p + "attn.norm_added_k.weight"], e)
        q = ref_rotate(torch.cat([qi, qt]), pos, cfg.axes_dims_rope, cfg.rope_theta).double()
        k = ref_rotate(torch.cat([ki, kt]), pos, cfg.axes_dims_rope, cfg.rope_theta).double()
        v = torch.cat([vi, vt])
        att = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(D)
        out = torch.einsum("hqk,khd->qhd", att.softmax(-1), v).reshape(q.shape[0], H * D)
        n = x.shape[0]
        x = x + im[2] * lin(out[:n], p + "attn.to_out.0")
        tx = tx + tm[2] * lin(out[n:], p + "attn.to_add_out")
        mlp = lambda y, m: lin(F.silu(lin(y, m + ".w1", False)) * lin(y, m + ".w3", False), m + ".w2", False)  # noqa: E731
        x = x + im[5] * mlp(rms(x, sd[p + "img_norm2.weight"], 1e-6) * (1 + im[4]) + im[3], p + "img_mlp")
        tx = tx + tm[5] * mlp(rms(tx, sd[p + "txt_norm2.weight"], 1e-6) * (1 + tm[4]) + tm[3], p + "txt_mlp")
    scale, shift = lin(F.silu(temb), "norm_out.linear").chunk(2)  # scale first
    x = F.layer_norm(x, x.shape[-1:], eps=1e-6) * (1 + scale) + shift
    return lin(x, "proj_out").float()


def test_forward_matches_spec_reference():
    torch.manual_seed(0)
    model = randomised(LensTransformer2DModel(tiny_config()))
    h, w, s = 3, 5, 4
    img, txt = torch.randn(1, h * w, 16), torch.randn(1, s, 2, 12)
    sigma = torch.tensor([0.37])
    ours = model(img, txt, sigma, (h, w))
    ref = ref_forward(model, img[0], txt[0], 0.37, h, w, s)
    torch.testing.assert_close(ours[0], ref, rtol=2e-3, atol=2e-3)


def test_mixed_size_batch_equals_each_sample_alone():
    torch.manual_seed(1)
    model = randomised(LensTransformer2DModel(tiny_config()), seed=1)
    sizes = [(4, 4), (2, 6), (3, 3)]
    text_lens = [5, 2, 4]
    n, s = max(h * w for h, w in sizes), max(text_lens)
    img = torch.randn(3, n, 16)
    txt = torch.randn(3, s, 2, 12)
    txt_mask = torch.arange(s)[None] < torch.tensor(text_lens)[:, None]
    sigma = torch.tensor([0.9, 0.5, 0.1])
    batched = model(img, txt, sigma, sizes, txt_mask)
    for b, ((h, w), t) in enumerate(zip(sizes, text_lens)):
        alone = model(img[b : b + 1, : h * w], txt[b : b + 1, :t], sigma[b : b + 1], (h, w))
        torch.testing.assert_close(batched[b, : h * w], alone[0], rtol=1e-4, atol=1e-5)
        ref = ref_forward(model, img[b, : h * w], txt[b], float(sigma[b]), h, w, t)
        torch.testing.assert_close(alone[0], ref, rtol=2e-3, atol=2e-3)


def test_padded_text_is_ignored_and_empty_prompt_works():
    model = randomised(LensTransformer2DModel(tiny_config()), seed=2)
    img, txt = torch.randn(2, 9, 16), torch.randn(2, 6, 2, 12)
    mask = torch.tensor([[True] * 3 + [False] * 3, [False] * 6])  # second: empty prompt, all-false
    out = model(img, txt, torch.tensor([0.5, 0.5]), (3, 3), mask)
    txt2 = txt.clone()
    txt2[0, 3:] = 100.0
    txt2[1] = -7.0
    out2 = model(img, txt2, torch.tensor([0.5, 0.5]), (3, 3), mask)
    torch.testing.assert_close(out, out2)
    assert torch.isfinite(out).all()


def test_fast_path_passes_no_mask(monkeypatch):
    model = LensTransformer2DModel(tiny_config())
    seen = []
    real_sdpa = F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None):
        seen.append(attn_mask)
        return real_sdpa(q, k, v, attn_mask=attn_mask)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    model(torch.randn(2, 4, 16), torch.randn(2, 3, 2, 12), torch.rand(2), (2, 2), torch.ones(2, 3, dtype=torch.bool))
    assert seen and all(m is None for m in seen)
    seen.clear()
    model(torch.randn(2, 4, 16), torch.randn(2, 3, 2, 12), torch.rand(2), [(2, 2), (1, 2)],
          torch.ones(2, 3, dtype=torch.bool))
    assert seen and all(m is not None and m.shape == (2, 1, 1, 7) for m in seen)
    assert not seen[0][1, 0, 0, 2:4].any()  # padded image tokens of sample 1 are never keys


def test_timestep_sinusoid_is_cos_first_scaled_by_1000():
    emb = timestep_sinusoid(torch.tensor([0.25]))
    assert emb.shape == (1, 256)
    assert emb[0, 0].item() == pytest.approx(math.cos(250.0), abs=1e-5)  # frequency 1, cos first
    assert emb[0, 128].item() == pytest.approx(math.sin(250.0), abs=1e-5)


def test_lens_preset_has_the_released_qk_norm_eps_and_sinusoid_order(lens_meta):
    cfg = lens_meta.config
    assert cfg.qk_norm_eps == 1e-6 and cfg.timestep_angle_order == "(sigma*freqs)*1000"
    attn = lens_meta.transformer_blocks[0].attn
    assert [getattr(attn, n).eps for n in ("norm_q", "norm_k", "norm_added_q", "norm_added_k")] == [1e-6] * 4
    assert lens_meta.time_text_embed.angle_order == "(sigma*freqs)*1000"
    # a released config.json, which names neither field, reads as the released model
    released = {k: v for k, v in cfg.to_dict().items() if k not in ("qk_norm_eps", "timestep_angle_order")}
    assert LensTransformerConfig.from_dict(released) == cfg


def test_qk_norm_eps_against_hand_computed_values():
    """Small queries, where eps matters: q / sqrt(mean(q^2) + eps), with the config's eps."""
    q = torch.tensor([[3e-4, -1e-3, 2e-4, 5e-4] * 4], dtype=torch.float64)  # the tiny config's head_dim 16
    for eps in (1e-6, 1e-5):
        norm = LensTransformer2DModel(replace(tiny_config(), qk_norm_eps=eps)).transformer_blocks[0].attn.norm_q
        norm = norm.double()
        mean_sq = (9e-8 + 1e-6 + 4e-8 + 25e-8) / 4  # 3.475e-7, by hand (the pattern repeats)
        expected = q / math.sqrt(mean_sq + eps)
        torch.testing.assert_close(norm(q), expected, rtol=1e-12, atol=0)
    assert 1 / math.sqrt(3.475e-7 + 1e-6) > 1.2 / math.sqrt(3.475e-7 + 1e-5)  # the two differ by far


def test_timestep_angles_round_in_the_released_order():
    """fp32 (sigma * freqs) * 1000, as the released code computes it; the other order rounds differently."""
    import numpy as np

    sigma = np.float32(0.7317)
    freqs = torch.exp(-math.log(10000) * torch.arange(128, dtype=torch.float32) / 128).numpy()  # fp32, as ours
    released = (sigma * freqs) * np.float32(1000)
    other = (np.float32(1000) * sigma) * freqs
    assert released.dtype == np.float32 and (released != other).any()  # the orders really differ here
    ours = timestep_angles(torch.tensor([0.7317]))[0].numpy()
    np.testing.assert_array_equal(ours, released)
    legacy = timestep_angles(torch.tensor([0.7317]), order="(1000*sigma)*freqs")[0].numpy()
    np.testing.assert_array_equal(legacy, other)
    emb = timestep_sinusoid(torch.tensor([0.7317]))[0]
    torch.testing.assert_close(emb[:128], torch.cos(torch.from_numpy(released)), rtol=0, atol=0)
    with pytest.raises(ValueError, match="timestep_angle_order"):
        LensTransformerConfig(timestep_angle_order="1000*sigma*freqs").validate()


def test_save_and_load_round_trip(tmp_path):
    model = randomised(LensTransformer2DModel(tiny_config()), seed=3)
    model.save_pretrained(tmp_path / "t")
    loaded = LensTransformer2DModel.from_pretrained(tmp_path / "t")
    assert loaded.config == model.config
    args = (torch.randn(1, 4, 16), torch.randn(1, 2, 2, 12), torch.tensor([0.3]), (2, 2))
    torch.testing.assert_close(model(*args), loaded(*args), rtol=1e-5, atol=1e-4)


def test_malformed_folders_give_clear_errors(tmp_path):
    with pytest.raises(UserError, match="no transformer config"):
        LensTransformer2DModel.from_pretrained(tmp_path)
    model = LensTransformer2DModel(tiny_config())
    model.save_pretrained(tmp_path / "t")
    (tmp_path / "t" / "config.json").write_text("{not json")
    with pytest.raises(UserError, match="malformed"):
        LensTransformer2DModel.from_pretrained(tmp_path / "t")
    model.save_pretrained(tmp_path / "u")
    LensTransformer2DModel(tiny_config(num_layers=3)).save_pretrained(tmp_path / "v")
    (tmp_path / "u" / "config.json").write_text((tmp_path / "v" / "config.json").read_text())
    with pytest.raises(UserError, match="missing"):
        LensTransformer2DModel.from_pretrained(tmp_path / "u")


def test_sharded_checkpoint_loads(tmp_path):
    import json

    from safetensors.torch import save_file

    model = randomised(LensTransformer2DModel(tiny_config()), seed=4)
    model.save_pretrained(tmp_path)
    (tmp_path / "diffusion_pytorch_model.safetensors").unlink()
    state = model.state_dict()
    keys = sorted(state)
    halves = [keys[: len(keys) // 2], keys[len(keys) // 2 :]]
    weight_map = {}
    for i, part in enumerate(halves):
        name = f"diffusion_pytorch_model-0000{i + 1}-of-00002.safetensors"
        save_file({k: state[k].contiguous() for k in part}, str(tmp_path / name))
        weight_map.update({k: name for k in part})
    (tmp_path / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    loaded = LensTransformer2DModel.from_pretrained(tmp_path)
    for k, v in loaded.state_dict().items():
        torch.testing.assert_close(v, state[k])


def test_unknown_preset_is_a_user_error():
    with pytest.raises(UserError, match="lens-3.8b"):
        preset("lens-9b")


def test_blocks_compile_as_one_real_valued_graph():
    """Per-block torch.compile (as training applies it) traces each block, RoPE included, as one graph
    (fullgraph: no host syncs or data-dependent branches) with no complex tensor in it (RoPE rotates in
    real arithmetic, which every compiler backend handles), and the compiled blocks equal the eager ones,
    gradients too. The recording backend sees each graph dynamo captures and runs it as is."""
    torch.manual_seed(3)
    model = randomised(LensTransformer2DModel(tiny_config()), seed=3)
    img, txt = torch.randn(2, 12, 16), torch.randn(2, 4, 2, 12)
    sigma = torch.tensor([0.8, 0.3])
    dtypes = set()

    def recording_backend(gm, example_inputs):
        for node in gm.graph.nodes:
            value = node.meta.get("example_value")
            if isinstance(value, torch.Tensor):
                dtypes.add(value.dtype)
        return gm.forward

    compiled = copy.deepcopy(model)
    for block in compiled.transformer_blocks:
        block.compile(backend=recording_backend, fullgraph=True)
    torch._dynamo.reset()
    eager_out = model(img, txt, sigma, (3, 4))
    compiled_out = compiled(img, txt, sigma, (3, 4))
    assert dtypes and not any(d.is_complex for d in dtypes), dtypes
    torch.testing.assert_close(compiled_out, eager_out)
    eager_out.square().mean().backward()
    compiled_out.square().mean().backward()
    for (name, p), q in zip(model.named_parameters(), compiled.parameters()):
        torch.testing.assert_close(q.grad, p.grad, msg=name)


def test_grow_depth_benchmark_adds_identity_blocks_that_then_learn():
    """benchmarks/grow_depth.py: the grown model computes exactly the original's velocity (its new blocks'
    gates are zero), holds the original blocks in order, and its new blocks get gradient, so training opens them."""
    path = Path(__file__).resolve().parent.parent / "benchmarks" / "grow_depth.py"
    spec = importlib.util.spec_from_file_location("grow_depth", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    model = randomised(LensTransformer2DModel(tiny_config(num_layers=3)))
    grown = bench.grow(model, [0, 0, 2])
    assert grown.config.num_layers == 6
    assert bench.max_difference(model, grown) == 0.0
    kept = [0, 3, 4]  # originals at 0, 1, 2 -> after two new blocks behind block 0
    for old, new in zip(model.transformer_blocks, (grown.transformer_blocks[i] for i in kept)):
        for a, b in zip(old.parameters(), new.parameters()):
            assert torch.equal(a, b)
    img, txt = torch.randn(2, 12, 16), torch.randn(2, 5, 2, 12)
    grown.train()
    grown(img, txt, torch.tensor([0.3, 0.8]), (3, 4)).square().mean().backward()
    for i in (1, 2, 5):
        assert grown.transformer_blocks[i].img_mod[1].weight.grad.abs().sum() > 0, i
    with pytest.raises(ValueError, match="block indices 0..2"):
        bench.grow(model, [3])
