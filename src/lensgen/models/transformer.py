"""The Lens MMDiT: 48 dual-stream blocks with one joint attention, as a pure `nn.Module`.

Module names and shapes follow the released diffusers-layout checkpoint (see DESIGN.md), so
`from_pretrained` loads released weights with no renaming. Beyond the public ports, every sample in
a batch may have its own token grid (h, w): image tokens are padded to the batch maximum, each sample
gets its own RoPE table, and a key-padding mask keeps padded tokens out of attention. With no padding
anywhere no mask is built (the fast path SDPA kernels need).

Shapes: image tokens (B, N, in_channels); text features (B, S, L, D) from L layers of a frozen LM;
sigma (B,) in [0, 1]. Output: velocity (B, N, in_channels), v = eps - x0.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lensgen.errors import UserError
from lensgen.models.rope import apply_rope, joint_rope

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
WEIGHTS_INDEX_NAME = "diffusion_pytorch_model.safetensors.index.json"


@dataclass
class LensTransformerConfig:
    """Field names follow the released config so a released `config.json` reads directly."""

    num_layers: int = 48
    num_attention_heads: int = 24
    attention_head_dim: int = 64
    patch_size: int = 2  # latent pixels per token side
    out_channels: int = 32  # latent channels; token channels = patch_size^2 * out_channels
    in_channels: int = 128
    enc_hidden_dim: int = 2880  # width D of each text-encoder layer
    selected_layer_index: tuple[int, ...] = (5, 11, 17, 23)  # which LM layers feed txt_norm.0..L-1
    axes_dims_rope: tuple[int, int, int] = (8, 28, 28)
    rope_theta: float = 10000.0
    mlp_hidden_dim: int | None = None  # default int(width * 8 / 3): 4096 at width 1536
    qk_norm_eps: float = 1e-6  # eps of the QK-norm RMSNorms (norm_q, norm_k, norm_added_q, norm_added_k)
    # the fp32 rounding order of the timestep sinusoid's angles: the released model's, or the other one
    # (the shipped Shapes model was trained with it; see TIMESTEP_ANGLE_ORDERS)
    timestep_angle_order: str = "(sigma*freqs)*1000"
    # pixels per image token of a sign layout drawing added to the image stream (`layout_in`, see
    # lensgen.shapes.sign_layout); 0: none, as in the released model
    layout_channels: int = 0

    @property
    def width(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    @property
    def mlp_dim(self) -> int:
        return self.mlp_hidden_dim or int(self.width / 3 * 8)

    @property
    def num_text_layers(self) -> int:
        return len(self.selected_layer_index)

    def validate(self) -> None:
        if self.timestep_angle_order not in TIMESTEP_ANGLE_ORDERS:
            raise ValueError(f"timestep_angle_order must be one of {', '.join(TIMESTEP_ANGLE_ORDERS)}, got "
                             f"{self.timestep_angle_order!r}")
        if sum(self.axes_dims_rope) != self.attention_head_dim:
            raise ValueError(f"axes_dims_rope {self.axes_dims_rope} must sum to attention_head_dim "
                             f"{self.attention_head_dim}")
        if self.layout_channels < 0:
            raise ValueError(f"layout_channels must be >= 0, got {self.layout_channels}")
        if self.patch_size**2 * self.out_channels != self.in_channels:
            raise ValueError(f"in_channels {self.in_channels} must equal patch_size^2 * out_channels "
                             f"= {self.patch_size**2 * self.out_channels}")

    def shares_weights_with(self, base: LensTransformerConfig) -> bool:
        """Whether every tensor of `base` is one of this model's, of the same shape (a layout input added to a
        model is the one difference allowed): the condition for storing this model as a difference to it."""
        return replace(self, layout_channels=base.layout_channels) == base and \
            base.layout_channels in (0, self.layout_channels)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["_class_name"] = "LensTransformer2DModel"
        return d

    @classmethod
    def from_dict(cls, d: dict) -> LensTransformerConfig:
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in known}
        for key in ("selected_layer_index", "axes_dims_rope"):
            if key in kwargs:
                kwargs[key] = tuple(kwargs[key])
        return cls(**kwargs)


# (sigma * freqs) * 1000 in fp32 is the released model's order; 1000 * sigma first rounds differently.
TIMESTEP_ANGLE_ORDERS = ("(sigma*freqs)*1000", "(1000*sigma)*freqs")

PRESETS: dict[str, LensTransformerConfig] = {
    # The released Lens model: 4,104,225,152 parameters, GPT-OSS-20B text features, FLUX.2 latents.
    "lens-3.8b": LensTransformerConfig(),
    # The shipped Shapes model: the Shapes VAE's 16-value tokens (4 latent channels, 2x2 patches, 8 px per
    # token), MiniLM text features (384 wide, blocks 1-4), 6 blocks of width 256 (15M parameters). Sized with
    # benchmarks/transformer_speed.py so CPU training runs at tens of images per second. It was trained with
    # QK-norm eps 1e-5 and the other sinusoid order, so it keeps them.
    "shapes-tiny": LensTransformerConfig(
        num_layers=6, num_attention_heads=4, attention_head_dim=64, patch_size=2, out_channels=4,
        in_channels=16, enc_hidden_dim=384, selected_layer_index=(1, 2, 3, 4), mlp_hidden_dim=None,
        qk_norm_eps=1e-5, timestep_angle_order="(1000*sigma)*freqs",
    ),
}


def preset(name: str) -> LensTransformerConfig:
    if name not in PRESETS:
        raise UserError(f"unknown transformer preset '{name}': choose one of {', '.join(PRESETS)}")
    return LensTransformerConfig(**asdict(PRESETS[name]))


def timestep_angles(sigma: torch.Tensor, dim: int = 256, max_period: float = 10000.0,
                    order: str = TIMESTEP_ANGLE_ORDERS[0]) -> torch.Tensor:
    """(B, dim/2) fp32 angles 1000 * sigma * freqs, freqs = max_period^(-i / (dim/2)).

    `order` is the rounding order of that product: the released model computes (sigma * freqs) * 1000,
    which differs from (1000 * sigma) * freqs in the last bits, visibly so in cos/sin of large angles."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=sigma.device) / half)
    if order == "(sigma*freqs)*1000":
        return (sigma.float()[:, None] * freqs[None]) * 1000.0
    if order == "(1000*sigma)*freqs":
        return (1000.0 * sigma.float())[:, None] * freqs[None]
    raise ValueError(f"unknown timestep angle order {order!r}; expected one of {TIMESTEP_ANGLE_ORDERS}")


def timestep_sinusoid(sigma: torch.Tensor, dim: int = 256, max_period: float = 10000.0,
                      order: str = TIMESTEP_ANGLE_ORDERS[0]) -> torch.Tensor:
    """sigma (B,) in [0, 1] -> (B, dim) [cos | sin] of `timestep_angles`."""
    args = timestep_angles(sigma, dim, max_period, order)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimestepEmbedder(nn.Module):
    def __init__(self, width: int, in_dim: int = 256):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, width)
        self.linear_2 = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


class TimeEmbedding(nn.Module):
    """`time_text_embed`: sigma -> sinusoid -> MLP. Lens has no pooled text and no guidance embedding."""

    def __init__(self, width: int, angle_order: str = TIMESTEP_ANGLE_ORDERS[0]):
        super().__init__()
        self.angle_order = angle_order
        self.timestep_embedder = TimestepEmbedder(width)

    def forward(self, sigma: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return self.timestep_embedder(timestep_sinusoid(sigma, order=self.angle_order).to(dtype))


class SwiGLU(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.w1 = nn.Linear(width, hidden, bias=False)  # gate
        self.w2 = nn.Linear(hidden, width, bias=False)  # down
        self.w3 = nn.Linear(width, hidden, bias=False)  # up

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class JointAttention(nn.Module):
    """Fused QKV per stream, RMSNorm QK-norm per stream, one attention over [image; text] tokens."""

    def __init__(self, width: int, heads: int, head_dim: int, qk_norm_eps: float = 1e-6):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        inner = heads * head_dim
        self.img_qkv = nn.Linear(width, 3 * inner)
        self.txt_qkv = nn.Linear(width, 3 * inner)
        self.norm_q = nn.RMSNorm(head_dim, eps=qk_norm_eps)
        self.norm_k = nn.RMSNorm(head_dim, eps=qk_norm_eps)
        self.norm_added_q = nn.RMSNorm(head_dim, eps=qk_norm_eps)
        self.norm_added_k = nn.RMSNorm(head_dim, eps=qk_norm_eps)
        self.to_out = nn.ModuleList([nn.Linear(inner, width), nn.Identity()])  # released key: to_out.0
        self.to_add_out = nn.Linear(inner, width)

    def _project(self, x, qkv, norm_q, norm_k):
        q, k, v = qkv(x).unflatten(-1, (3, self.heads, self.head_dim)).unbind(dim=2)
        return norm_q(q), norm_k(k), v

    def forward(self, img, txt, cos, sin, attn_mask):
        n_img = img.shape[1]
        iq, ik, iv = self._project(img, self.img_qkv, self.norm_q, self.norm_k)
        tq, tk, tv = self._project(txt, self.txt_qkv, self.norm_added_q, self.norm_added_k)
        q = apply_rope(torch.cat([iq, tq], dim=1), cos, sin).transpose(1, 2)
        k = apply_rope(torch.cat([ik, tk], dim=1), cos, sin).transpose(1, 2)
        v = torch.cat([iv, tv], dim=1).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask).transpose(1, 2).flatten(2)
        return self.to_out[0](out[:, :n_img]), self.to_add_out(out[:, n_img:])


def _modulate(x, shift, scale):
    """x * (1 + scale) + shift, fused; shift/scale are per sample (B, C)."""
    return torch.addcmul(shift[:, None], x, 1 + scale[:, None])


class LensBlock(nn.Module):
    """Dual-stream block: per-stream RMSNorm + adaLN modulation (shift, scale, gate) x2, joint attention,
    per-stream SwiGLU MLP."""

    def __init__(self, cfg: LensTransformerConfig):
        super().__init__()
        w = cfg.width
        self.img_mod = nn.Sequential(nn.SiLU(), nn.Linear(w, 6 * w))
        self.txt_mod = nn.Sequential(nn.SiLU(), nn.Linear(w, 6 * w))
        self.img_norm1, self.img_norm2 = nn.RMSNorm(w, eps=1e-6), nn.RMSNorm(w, eps=1e-6)
        self.txt_norm1, self.txt_norm2 = nn.RMSNorm(w, eps=1e-6), nn.RMSNorm(w, eps=1e-6)
        self.attn = JointAttention(w, cfg.num_attention_heads, cfg.attention_head_dim, cfg.qk_norm_eps)
        self.img_mlp = SwiGLU(w, cfg.mlp_dim)
        self.txt_mlp = SwiGLU(w, cfg.mlp_dim)

    def forward(self, img, txt, temb, cos, sin, attn_mask):
        i_shift1, i_scale1, i_gate1, i_shift2, i_scale2, i_gate2 = self.img_mod(temb).chunk(6, dim=-1)
        t_shift1, t_scale1, t_gate1, t_shift2, t_scale2, t_gate2 = self.txt_mod(temb).chunk(6, dim=-1)
        img_attn, txt_attn = self.attn(
            _modulate(self.img_norm1(img), i_shift1, i_scale1),
            _modulate(self.txt_norm1(txt), t_shift1, t_scale1),
            cos, sin, attn_mask,
        )
        img = torch.addcmul(img, i_gate1[:, None], img_attn)
        txt = torch.addcmul(txt, t_gate1[:, None], txt_attn)
        img = torch.addcmul(img, i_gate2[:, None], self.img_mlp(_modulate(self.img_norm2(img), i_shift2, i_scale2)))
        txt = torch.addcmul(txt, t_gate2[:, None], self.txt_mlp(_modulate(self.txt_norm2(txt), t_shift2, t_scale2)))
        return img, txt


class OutputNorm(nn.Module):
    """`norm_out`: LayerNorm (no affine) then (1 + scale), + shift; the linear gives scale THEN shift."""

    def __init__(self, width: int):
        super().__init__()
        self.linear = nn.Linear(width, 2 * width)

    def forward(self, x, temb):
        scale, shift = self.linear(F.silu(temb)).chunk(2, dim=-1)
        return _modulate(F.layer_norm(x, x.shape[-1:], eps=1e-6), shift, scale)


@dataclass
class TokenLayout:
    """Which image tokens are real: per-sample grid sizes and the padded token count of the batch."""

    sizes: list[tuple[int, int]] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return max(h * w for h, w in self.sizes)

    @property
    def padded(self) -> bool:
        return len({h * w for h, w in self.sizes}) > 1

    def mask(self, device=None) -> torch.Tensor:
        """(B, N) bool, True for real image tokens."""
        counts = torch.tensor([h * w for h, w in self.sizes], device=device)
        return torch.arange(self.num_tokens, device=device)[None] < counts[:, None]


class ZeroLinear(nn.Linear):
    """A Linear that starts (and resets) at zero: an input added to a trained model starts as nothing."""

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)


class LensTransformer2DModel(nn.Module):
    def __init__(self, config: LensTransformerConfig):
        super().__init__()
        config.validate()
        self.config = config
        w = config.width
        self.time_text_embed = TimeEmbedding(w, config.timestep_angle_order)
        self.txt_norm = nn.ModuleList(nn.RMSNorm(config.enc_hidden_dim, eps=1e-5)
                                      for _ in range(config.num_text_layers))
        self.txt_in = nn.Linear(config.enc_hidden_dim * config.num_text_layers, w)
        self.img_in = nn.Linear(config.in_channels, w)
        if config.layout_channels:
            self.layout_in = ZeroLinear(config.layout_channels, w, bias=False)
        self.transformer_blocks = nn.ModuleList(LensBlock(config) for _ in range(config.num_layers))
        self.norm_out = OutputNorm(w)
        self.proj_out = nn.Linear(w, config.patch_size**2 * config.out_channels)

    def forward(
        self,
        img: torch.Tensor,
        txt: torch.Tensor,
        sigma: torch.Tensor,
        sizes: list[tuple[int, int]] | tuple[int, int],
        txt_mask: torch.Tensor | None = None,
        layout: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """img (B, N, C) tokens, row-major per sample and right-padded to N; txt (B, S, L, D) features;
        sigma (B,); sizes: one (h, w) for all samples or a list with one per sample; txt_mask (B, S) bool
        or None when every text token is real; layout (B, N, layout_channels): per image token, the pixels
        of a sign layout drawing there (models with `layout_channels` only; None: no sign). Returns the
        velocity (B, N, C); padded rows are garbage."""
        batch = img.shape[0]
        tokens = TokenLayout([tuple(sizes)] * batch if isinstance(sizes[0], int) else [tuple(s) for s in sizes])
        if len(tokens.sizes) != batch or tokens.num_tokens != img.shape[1]:
            raise ValueError(f"sizes {tokens.sizes} do not match image tokens {tuple(img.shape)}")
        if txt.dim() != 4 or txt.shape[2] != self.config.num_text_layers:
            raise ValueError(f"text features must be (B, S, {self.config.num_text_layers}, D), got {tuple(txt.shape)}")
        dtype = self.img_in.weight.dtype
        temb = self.time_text_embed(sigma, dtype)
        txt_h = self.txt_in(torch.cat([norm(txt[:, :, i]) for i, norm in enumerate(self.txt_norm)], dim=-1))
        img_h = self.img_in(img)
        if layout is not None:
            if not self.config.layout_channels:
                raise ValueError("a layout was given but this transformer has no layout input (layout_channels 0)")
            if layout.shape != (*img.shape[:2], self.config.layout_channels):
                raise ValueError(f"layout must be {(*img.shape[:2], self.config.layout_channels)}, "
                                 f"got {tuple(layout.shape)}")
            img_h = img_h + self.layout_in(layout.to(img_h.dtype))
        cos, sin = joint_rope(tokens.sizes, img.shape[1], txt.shape[1], self.config.axes_dims_rope,
                              self.config.rope_theta, device=img.device)
        attn_mask = self.key_mask(tokens, txt_mask, img.device)
        for block in self.transformer_blocks:
            img_h, txt_h = block(img_h, txt_h, temb, cos, sin, attn_mask)
        return self.proj_out(self.norm_out(img_h, temb))

    @staticmethod
    def key_mask(layout: TokenLayout, txt_mask: torch.Tensor | None, device) -> torch.Tensor | None:
        """(B, 1, 1, N + S) bool mask of keys to attend to, or None when every token is real (fast path)."""
        if not layout.padded and (txt_mask is None or bool(txt_mask.all())):
            return None
        img_mask = layout.mask(device)
        if txt_mask is None:
            raise ValueError("a padded image batch needs txt_mask too (pass all-True if no text is padded)")
        return torch.cat([img_mask, txt_mask.to(device=device, dtype=torch.bool)], dim=1)[:, None, None, :]

    # ---- diffusers-style folders -------------------------------------------------------------

    def save_pretrained(self, directory: str | os.PathLike, storage: str = "fp32",
                        delta_from: str | os.PathLike | None = None) -> None:
        """config.json + safetensors; `storage` fp32, bf16, int8 (per-row scales) or int4 (see weight_storage).
        With `delta_from` (the transformer folder of the model this one was tuned from) the file holds the
        difference to that model's weights, and loading adds them back; the base must hold whole weights."""
        from safetensors.torch import save

        from lensgen.io import atomic_open, atomic_write_json
        from lensgen.models.weight_storage import DELTA_KEY, pack_state_dict

        directory = Path(directory)
        state = self.state_dict()
        metadata = {"format": "pt", "lensgen_storage": storage}
        if delta_from is not None:
            base_dir = Path(delta_from)
            base_config, base = _read_weights(base_dir, "cpu", as_base=True)
            if not self.config.shares_weights_with(base_config):
                raise UserError(f"cannot store the difference to {base_dir}: its transformer config differs "
                                f"from this model's")
            # a tensor the base lacks (a layout input added since) is stored whole
            state = {k: v.detach().float().cpu() - base[k] if v.is_floating_point() and k in base else v
                     for k, v in state.items()}
            metadata[DELTA_KEY] = os.path.relpath(base_dir.resolve(), directory.resolve())
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write_json(directory / CONFIG_NAME, self.config.to_dict())
        tensors = pack_state_dict(state, storage)
        with atomic_open(directory / WEIGHTS_NAME, "wb") as f:
            f.write(save(tensors, metadata=metadata))

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, device=None, dtype=None) -> LensTransformer2DModel:
        """Load a folder with config.json and safetensors weights (single file or sharded with an index; whole
        weights, or the difference to another folder's as `save_pretrained(delta_from=...)` writes)."""
        directory = Path(directory)
        config, state = _read_weights(directory, str(device or "cpu"))
        with torch.device("meta"):
            model = cls(config)
        missing = set(model.state_dict()) - set(state)
        unexpected = set(state) - set(model.state_dict())
        if missing or unexpected:
            raise UserError(f"weights in {directory} do not match the config: missing {sorted(missing)[:5]}, "
                            f"unexpected {sorted(unexpected)[:5]}")
        # float32 unless asked otherwise (bf16 is far slower on CPUs)
        state = {k: v.to(dtype) if dtype is not None and v.is_floating_point() else v for k, v in state.items()}
        model.load_state_dict(state, assign=True)
        if dtype is not None:
            model.to(dtype)
        return model.eval()


def weight_map(directory: Path) -> dict[str, Path]:
    """Tensor name -> the safetensors file of a transformer folder that holds it (one file, or an index)."""
    from safetensors import safe_open

    if (directory / WEIGHTS_INDEX_NAME).is_file():
        index = json.loads((directory / WEIGHTS_INDEX_NAME).read_text())
        return {name: directory / file for name, file in index["weight_map"].items()}
    if (directory / WEIGHTS_NAME).is_file():
        with safe_open(str(directory / WEIGHTS_NAME), "pt") as f:
            return {name: directory / WEIGHTS_NAME for name in f.keys()}
    raise UserError(f"no transformer weights in {directory}: expected {WEIGHTS_NAME} or {WEIGHTS_INDEX_NAME}")


def _read_weights(directory: Path, device: str, as_base: bool = False) -> tuple[LensTransformerConfig, dict]:
    """A transformer folder's config and float32 state dict (int8/int4 dequantized, differences added to
    their base's weights)."""
    from safetensors.torch import load_file

    from lensgen.models.weight_storage import delta_base, unpack_state_dict

    config_path = directory / CONFIG_NAME
    if not config_path.is_file():
        raise UserError(f"no transformer config at {config_path}: expected a diffusers-style folder "
                        f"with {CONFIG_NAME} and {WEIGHTS_NAME}")
    try:
        config = LensTransformerConfig.from_dict(json.loads(config_path.read_text()))
        config.validate()
    except (json.JSONDecodeError, TypeError, ValueError) as err:
        raise UserError(f"malformed transformer config {config_path}: {err}") from None
    files = sorted(set(weight_map(directory).values()))
    tensors = {}
    for file in files:
        tensors.update(load_file(str(file), device=device))
    state = unpack_state_dict(tensors, torch.float32)
    base_dir = delta_base(files[0])
    if base_dir is not None:
        if as_base:
            raise UserError(f"{directory} stores differences to {base_dir}, so it cannot be the base of another "
                            f"folder's differences: the base must hold whole weights")
        base_config, base = _read_weights(base_dir, device, as_base=True)
        if not config.shares_weights_with(base_config):
            raise UserError(f"{directory} stores differences to {base_dir}, whose transformer config differs")
        state = {k: base[k] + v if k in base and v.is_floating_point() else v for k, v in state.items()}
    return config, state
