"""Text encoders: layer selection against a manual forward, the Lens chat template and its 97-token prefix,
masks and empty prompts, saving/loading, errors.

GPT-OSS's tokenizer (o200k_harmony) is rebuilt offline from the vocabulary bundled in `quicktok-v1` and checked
token-for-token against quicktok; the harmony chat template is written here from the format's documented
structure (the real one ships in the model folder).
"""

import json
import os
import struct

import pytest
import quicktok  # the dev extra installs it: without it these tests must fail, not skip
import torch
from torch import nn

from lensgen.errors import UserError
from lensgen.models.text_encoder import (
    CONFIG_NAME,
    LENS_ASSISTANT_THINKING,
    LENS_SYSTEM_PROMPT,
    HFCausalLMConfig,
    MiniLMTextEncoder,
    TextFeatures,
    build_text_encoder,
    count_prefix_tokens,
    load_text_encoder,
    render_prompt,
)

# A minimal harmony template: system message (identity, knowledge cutoff, today's date, reasoning, channels),
# a leading system/developer message rendered as "# Instructions", user turns, and a final assistant turn with
# its analysis-channel thought (training-style rendering, ending in <|return|>). INSTRUCTIONS_END is "\n\n" in
# the current GPT-OSS template revision and "" in the first one: both give a 97-token Lens prefix.
HARMONY_TEMPLATE = r"""
{{- "<|start|>system<|message|>You are ChatGPT, a large language model trained by OpenAI.\n" -}}
{{- "Knowledge cutoff: 2024-06\nCurrent date: " + strftime_now("%Y-%m-%d") + "\n\n" -}}
{{- "Reasoning: " + (reasoning_effort if reasoning_effort is defined else "medium") + "\n\n" -}}
{{- "# Valid channels: analysis, commentary, final. Channel must be included for every message.<|end|>" -}}
{%- set ns = namespace(rest=messages) -%}
{%- if messages[0].role in ["system", "developer"] -%}
{{- "<|start|>developer<|message|># Instructions\n\n" + messages[0].content + "INSTRUCTIONS_END<|end|>" -}}
{%- set ns.rest = messages[1:] -%}
{%- endif -%}
{%- for m in ns.rest -%}
{%- if m.role == "user" -%}
{{- "<|start|>user<|message|>" + m.content + "<|end|>" -}}
{%- elif m.role == "assistant" and loop.last and not add_generation_prompt -%}
{%- if m.thinking -%}{{- "<|start|>assistant<|channel|>analysis<|message|>" + m.thinking + "<|end|>" -}}{%- endif -%}
{{- "<|start|>assistant<|channel|>final<|message|>" + m.content + "<|return|>" -}}
{%- elif m.role == "assistant" -%}
{{- "<|start|>assistant<|channel|>final<|message|>" + m.content + "<|end|>" -}}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}<|start|>assistant{%- endif -%}
"""
CHATML_TEMPLATE = r"""
{%- for m in messages -%}{{- "<|im_start|>" + m.role + "\n" + m.content + "<|im_end|>\n" -}}{%- endfor -%}
{%- if add_generation_prompt -%}{{- "<|im_start|>assistant\n" -}}
{%- if enable_thinking is defined and not enable_thinking -%}{{- "<think>\n\n</think>\n\n" -}}{%- endif -%}
{%- endif -%}
"""
CHATML_SPECIALS = {"<|im_start|>": 201088, "<|im_end|>": 201089}
PROMPT = "A small red circle in the top left, left of a large blue square on a light grey background."
SHORT = "a green star"


def _lens_text(prompt: str, date: str = "2025-08-05", instructions_end: str = "\n\n") -> str:
    """The Lens conversation as GPT-OSS's harmony format renders it, written out by hand."""
    return ("<|start|>system<|message|>You are ChatGPT, a large language model trained by OpenAI.\n"
            f"Knowledge cutoff: 2024-06\nCurrent date: {date}\n\nReasoning: medium\n\n"
            "# Valid channels: analysis, commentary, final. Channel must be included for every message.<|end|>"
            f"<|start|>developer<|message|># Instructions\n\n{LENS_SYSTEM_PROMPT}{instructions_end}<|end|>"
            f"<|start|>user<|message|>{prompt}<|end|>"
            f"<|start|>assistant<|channel|>analysis<|message|>{LENS_ASSISTANT_THINKING}<|end|>"
            "<|start|>assistant<|channel|>final<|message|>")


def _chatml_text(prompt: str) -> str:
    return f"<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"


# Every text the tests tokenize; the rebuilt tokenizer must give quicktok's ids on each.
TEXTS = ([_lens_text(p) for p in (PROMPT, SHORT, "a")] + [_lens_text(PROMPT, "1999-12-31", "")]
         + [_chatml_text(p) for p in (PROMPT, "a")] + [PROMPT, SHORT, "a"])


def _quicktok_tables():
    """o200k's byte-pair ranks and o200k_harmony's special tokens, read from quicktok's bundled data files."""
    data = os.path.join(os.path.dirname(quicktok.__file__), "data")
    raw = open(os.path.join(data, "o200k.vocab"), "rb").read()
    ranks, off = {}, 4
    for _ in range(struct.unpack_from("<I", raw, 0)[0]):
        (n,) = struct.unpack_from("<H", raw, off)
        ranks[raw[off + 2: off + 2 + n]] = struct.unpack_from("<I", raw, off + 2 + n)[0]
        off += 6 + n
    raw = open(os.path.join(data, "o200k_harmony.special"), "rb").read()
    names, off = {}, 4
    for _ in range(struct.unpack_from("<I", raw, 0)[0]):
        tid, n = struct.unpack_from("<IH", raw, off)
        name = raw[off + 6: off + 6 + n].decode()
        if tid not in names or not name.startswith("<|reserved_"):  # 200018 is <|endofprompt|> and an alias
            names[tid] = name
        off += 6 + n
    return ranks, {name: tid for tid, name in names.items()}


def _merge_path(ranks: dict, piece: bytes) -> set:
    """Every token tiktoken's byte-pair process forms on `piece` (it merges the lowest-ranked pair first)."""
    parts = [bytes([b]) for b in piece]
    seen = set(parts)
    while len(parts) > 1:
        i = min(range(len(parts) - 1), key=lambda j: ranks.get(parts[j] + parts[j + 1], float("inf")))
        if parts[i] + parts[i + 1] not in ranks:
            break
        parts[i: i + 2] = [parts[i] + parts[i + 1]]
        seen.add(parts[i])
    return seen


def _o200k_harmony(texts: list[str], extra_specials: dict):
    """A `tokenizers` BPE that tokenizes `texts` (and any run of up to 3 digits) exactly as o200k_harmony, with
    the real ids. It keeps only the tokens those texts need (the 256 bytes and every token the merge process
    forms on them), so it builds and loads in well under a second; other text still tokenizes, in smaller
    pieces. Merges: every split of a kept token, ordered by the merged token's rank (tiktoken's rule)."""
    import regex
    from quicktok._import_core import O200K_PAT
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import BPE
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    ranks, specials = _quicktok_tables()
    specials |= extra_specials
    split = regex.compile("(" + "|".join(regex.escape(s) for s in specials) + ")")
    pieces = {str(n) for n in range(1000)} | {f"{n:02d}" for n in range(100)} | {f"{n:03d}" for n in range(100)}
    for text in texts:
        for chunk in split.split(text):
            if chunk not in specials:
                pieces.update(regex.findall(O200K_PAT, chunk))
    kept = {bytes([b]) for b in range(256)}
    for piece in pieces:
        kept |= _merge_path(ranks, piece.encode())
    byte_chars = bytes_to_unicode()

    def text_of(b: bytes) -> str:
        return "".join(byte_chars[x] for x in b)

    merges = sorted((ranks[b], text_of(b[:i]), text_of(b[i:])) for b in kept for i in range(1, len(b))
                    if b[:i] in kept and b[i:] in kept)
    tok = Tokenizer(BPE({text_of(b): ranks[b] for b in kept} | specials, [m[1:] for m in merges],
                        fuse_unk=False, ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(O200K_PAT), behavior="isolated"),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(s, normalized=False, special=True) for s in sorted(specials, key=specials.get)])
    return tok


def _hf_tokenizer(backend, template: str, **kw):
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    copy = Tokenizer.from_str(backend.to_str())  # never share (and mutate) another tokenizer's backend
    return PreTrainedTokenizerFast(tokenizer_object=copy, chat_template=template, **kw)


@pytest.fixture(scope="module")
def o200k():
    return _o200k_harmony(TEXTS, CHATML_SPECIALS)


@pytest.fixture(scope="module")
def harmony_tokenizer(o200k):
    return _hf_tokenizer(o200k, HARMONY_TEMPLATE.replace("INSTRUCTIONS_END", r"\n\n"),
                         pad_token="<|endoftext|>", eos_token="<|return|>")


def _tiny_gpt_oss(layers=24):
    from transformers import GptOssConfig, GptOssForCausalLM

    torch.manual_seed(0)
    cfg = GptOssConfig(num_hidden_layers=layers, hidden_size=16, intermediate_size=16, head_dim=8,
                       num_attention_heads=2, num_key_value_heads=1, num_local_experts=4, num_experts_per_tok=2,
                       sliding_window=16, max_position_embeddings=1024, tie_word_embeddings=True,
                       rope_parameters={"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0,
                                        "truncate": False, "original_max_position_embeddings": 32})
    return GptOssForCausalLM(cfg).eval()
@pytest.fixture(scope="module")
def lens_folder(tmp_path_factory, harmony_tokenizer):
    """The released Lens layout: text_encoder/ (GPT-OSS weights) beside tokenizer/."""
    root = tmp_path_factory.mktemp("lens")
    _tiny_gpt_oss().save_pretrained(root / "text_encoder")
    harmony_tokenizer.save_pretrained(root / "tokenizer")
    return root


@pytest.fixture(scope="module")
def gpt_oss(lens_folder):
    return build_text_encoder({"backend": "gpt-oss", "path": str(lens_folder / "text_encoder"),
                               "chat_date": "2025-08-05"})


def _reference_hidden_states(folder, ids):
    """transformers' own forward with the final norm replaced by identity: hidden_states[k + 1] is then the raw
    output of decoder layer k for every k, the last one included. Also returns the normed model output."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    norm, model.model.norm = model.model.norm, nn.Identity()
    with torch.no_grad():
        hidden = model.model(input_ids=ids, output_hidden_states=True).hidden_states
        return hidden, norm(hidden[-1])


@pytest.fixture(scope="module")
def gpt_oss_reference(gpt_oss, lens_folder):
    """(input ids of the rendered PROMPT, raw hidden states, normed output) from transformers' forward."""
    ids = gpt_oss.tokenizer(gpt_oss.render(PROMPT), return_tensors="pt")["input_ids"]
    return (ids, *_reference_hidden_states(lens_folder / "text_encoder", ids))


# ---- the tokenizer and the Lens template ------------------------------------------------------------------


def test_rebuilt_tokenizer_matches_quicktok(harmony_tokenizer):
    enc = quicktok.get_encoding("o200k_harmony")
    for text in TEXTS:
        if "<|im_" not in text:
            assert harmony_tokenizer(text)["input_ids"] == enc.encode_with_special(text)
    assert harmony_tokenizer.convert_tokens_to_ids("<|start|>") == 200006
    assert harmony_tokenizer.convert_tokens_to_ids("<|endofprompt|>") == 200018


def test_lens_rendering_and_97_token_prefix(harmony_tokenizer):
    cfg = HFCausalLMConfig(path="unused", template="lens-harmony", system_prompt=LENS_SYSTEM_PROMPT,
                           assistant_thinking=LENS_ASSISTANT_THINKING, chat_date="2025-08-05")
    assert render_prompt(harmony_tokenizer, cfg, PROMPT) == _lens_text(PROMPT)
    assert count_prefix_tokens(harmony_tokenizer, cfg) == 97
    prefix = _lens_text(PROMPT).split(PROMPT)[0]
    assert prefix.endswith("<|start|>user<|message|>") and len(harmony_tokenizer(prefix)["input_ids"]) == 97
    # the date is fixed-width, so today's date (chat_date None) gives the same count
    cfg.chat_date = None
    assert count_prefix_tokens(harmony_tokenizer, cfg) == 97
    # the first template revision has no "\n\n" after the instructions: ".\n\n" is one token, still 97
    old = _hf_tokenizer(harmony_tokenizer.backend_tokenizer, HARMONY_TEMPLATE.replace("INSTRUCTIONS_END", ""))
    cfg.chat_date = "1999-12-31"
    assert render_prompt(old, cfg, PROMPT) == _lens_text(PROMPT, "1999-12-31", "")
    assert count_prefix_tokens(old, cfg) == 97
    # without the developer instructions the prefix is much shorter: the 97 counts them
    cfg.system_prompt = None
    assert count_prefix_tokens(harmony_tokenizer, cfg) == 64


# ---- GPT-OSS --------------------------------------------------------------------------------------------


def test_gpt_oss_lens_features_equal_manual_forward(gpt_oss, gpt_oss_reference):
    assert (gpt_oss.layers, gpt_oss.max_length, gpt_oss.prefix_tokens) == ([5, 11, 17, 23], 512, 97)
    assert (gpt_oss.num_layers, gpt_oss.hidden_size) == (4, 16)
    out = gpt_oss.encode([PROMPT])
    ids, hidden, normed = gpt_oss_reference
    assert out.features.shape == (1, ids.shape[1] - 97, 4, 16) and out.mask.all()
    assert gpt_oss.tokenizer.decode(ids[0, 97:]).startswith(PROMPT)  # the kept tokens start at the prompt
    for j, k in enumerate([5, 11, 17, 23]):
        torch.testing.assert_close(out.features[0, :, j], hidden[k + 1][0, 97:], atol=1e-5, rtol=1e-5)
    # the last selected layer is the last decoder layer: raw residual stream, not the normed model output
    assert not torch.allclose(out.features[0, :, 3], normed[0, 97:], atol=1e-2)


def test_gpt_oss_runs_only_needed_layers(lens_folder, gpt_oss_reference):
    enc = build_text_encoder({"backend": "gpt-oss", "path": str(lens_folder / "text_encoder"), "layers": [1, 3],
                              "chat_date": "2025-08-05"})
    assert len(enc.model.layers) == 4
    _, hidden, _ = gpt_oss_reference
    out = enc.encode([PROMPT])
    torch.testing.assert_close(out.features[0, :, 0], hidden[2][0, 97:], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.features[0, :, 1], hidden[4][0, 97:], atol=1e-5, rtol=1e-5)


def test_gpt_oss_batch_padding_empty_and_truncation(gpt_oss, monkeypatch):
    short = SHORT
    batch = gpt_oss.encode([PROMPT, "", short])
    alone = [gpt_oss.encode([p]) for p in (PROMPT, short)]
    assert not batch.mask[1].any() and batch.features[1].abs().sum() == 0
    for row, single in zip((0, 2), alone):
        n = single.length
        assert batch.mask[row].sum() == n
        torch.testing.assert_close(batch.features[row, :n], single.features[0], atol=1e-5, rtol=1e-5)
        assert batch.features[row, n:].abs().sum() == 0
    assert gpt_oss.encode(["", ""]).mask.shape == (2, 1)  # all empty: one masked token
    # prompt_tokens counts what encode keeps before truncation, template tail included
    assert gpt_oss.prompt_tokens(short) == alone[1].length and gpt_oss.prompt_tokens(PROMPT) == alone[0].length
    monkeypatch.setattr(gpt_oss, "max_length", 8)
    out = gpt_oss.encode([PROMPT, short])
    assert out.length == 8 and out.mask[0].all()
    torch.testing.assert_close(out.features[0], alone[0].features[0, :8], atol=1e-5, rtol=1e-5)


def test_prefix_count_is_checked(lens_folder):
    with pytest.raises(UserError, match="97"):
        build_text_encoder({"backend": "gpt-oss", "path": str(lens_folder / "text_encoder"), "prefix_tokens": 96})


def test_save_and_load(gpt_oss, lens_folder, tmp_path):
    # a plain released folder loads with the Lens defaults
    released = load_text_encoder(lens_folder / "text_encoder")
    assert released.config_dict()["template"] == "lens-harmony" and released.prefix_tokens == 97
    # our config JSON, with a path relative to the folder holding it
    folder = lens_folder / "lensgen_te"
    gpt_oss.save_pretrained(folder)
    cfg = json.loads((folder / CONFIG_NAME).read_text())
    assert cfg["backend"] == "gpt-oss" and cfg["layers"] == [5, 11, 17, 23]
    cfg["path"] = "../text_encoder"
    (folder / CONFIG_NAME).write_text(json.dumps(cfg))
    again = load_text_encoder(folder)
    torch.testing.assert_close(again.encode([PROMPT]).features, gpt_oss.encode([PROMPT]).features)


# ---- Qwen3 ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def qwen_folder(tmp_path_factory, o200k):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    # the o200k BPE plus ChatML's two special tokens: the backend only needs *a* tokenizer with a chat template
    tok = _hf_tokenizer(o200k, CHATML_TEMPLATE)
    torch.manual_seed(0)
    cfg = Qwen3Config(vocab_size=201090, hidden_size=16, intermediate_size=32, num_hidden_layers=8,
                      num_attention_heads=2, num_key_value_heads=1, head_dim=8, tie_word_embeddings=True)
    folder = tmp_path_factory.mktemp("qwen3")
    Qwen3ForCausalLM(cfg).eval().save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("template,prefix", [("chat", 3), ("plain", 0)])
def test_qwen3_features_equal_manual_forward(qwen_folder, template, prefix):
    enc = build_text_encoder({"backend": "qwen3", "path": str(qwen_folder), "template": template})
    assert enc.layers == [1, 3, 5, 7] and enc.prefix_tokens == prefix  # default: quarter depths
    assert enc.config_dict()["chat_template_kwargs"] == {"enable_thinking": False}
    ids = enc.tokenizer(enc.render(PROMPT), return_tensors="pt")["input_ids"]
    assert enc.render(PROMPT) == (_chatml_text(PROMPT) if template == "chat" else PROMPT)
    hidden, _ = _reference_hidden_states(qwen_folder, ids)
    out = enc.encode([PROMPT])
    assert out.length == ids.shape[1] - prefix
    for j, k in enumerate(enc.layers):
        torch.testing.assert_close(out.features[0, :, j], hidden[k + 1][0, prefix:], atol=1e-5, rtol=1e-5)


# ---- MiniLM ---------------------------------------------------------------------------------------------

# ~110 words in the style of the Shapes world's dense captions
DENSE = ("A simple flat illustration of six flat shapes: two red hexagons, a brown hexagon, a brown triangle, a blue "
         "star and a brown circle on a dark grey background with a faint pattern of dots. In the top left there is "
         "a small red hexagon, upright. The top centre holds a small blue star, tilted about 15 degrees clockwise. "
         "The top right holds a small brown hexagon, tilted about 25 degrees clockwise. The middle left holds a "
         "small brown triangle, tilted about 5 degrees clockwise. The bottom centre holds another small red "
         "hexagon, tilted about 30 degrees counterclockwise. The middle right holds a medium brown circle. In total "
         "there are six objects, none of them overlapping.")


@pytest.fixture(scope="module")
def minilm():
    return build_text_encoder({"backend": "minilm"})


def test_minilm_layers_equal_hidden_states(minilm):
    from transformers import AutoModel

    assert isinstance(minilm, MiniLMTextEncoder)
    assert (minilm.layers, minilm.num_layers, minilm.hidden_size, minilm.max_length) == ([1, 2, 3, 4], 4, 384, 256)
    reference = AutoModel.from_pretrained(str(minilm.tokenizer.name_or_path), local_files_only=True).eval()
    ids = minilm.tokenizer(["a red circle above a blue square"], return_tensors="pt")
    with torch.no_grad():
        hidden = reference(**ids, output_hidden_states=True).hidden_states
    out = minilm.encode(["a red circle above a blue square"])
    expected = torch.stack([hidden[k + 1][0] for k in (1, 2, 3, 4)], dim=1)
    torch.testing.assert_close(out.features[0], expected, atol=1e-5, rtol=1e-5)


def test_minilm_dense_caption_not_cut_and_empty_rows(minilm):
    n_tokens = len(minilm.tokenizer(DENSE)["input_ids"])
    assert 110 <= len(DENSE.split()) <= 120 and n_tokens > 128  # 128 tokens would cut it
    out = minilm.encode(["", DENSE, "two stars"])
    assert out.mask.sum(1).tolist() == [0, n_tokens, 4]
    assert minilm.prompt_tokens(DENSE) == n_tokens and minilm.prompt_tokens(DENSE * 3) > minilm.max_length
    assert out.features[0].abs().sum() == 0 and out.features[2, 4:].abs().sum() == 0


def test_minilm_frozen_and_config_roundtrip(minilm, tmp_path):
    assert not any(p.requires_grad for p in minilm.parameters())
    wrapper = nn.ModuleDict({"te": minilm}).train()
    assert not minilm.training and not wrapper["te"].model.training
    minilm.save_pretrained(tmp_path)
    assert json.loads((tmp_path / CONFIG_NAME).read_text()) == {"backend": "minilm", "path": None,
                                                                 "layers": [1, 2, 3, 4], "max_length": 256}
    again = load_text_encoder(tmp_path)
    torch.testing.assert_close(again.encode(["a cat"]).features, minilm.encode(["a cat"]).features)


# ---- TextFeatures and errors ----------------------------------------------------------------------------


def test_text_features_pad_and_cat():
    a = TextFeatures(torch.ones(1, 2, 3, 4), torch.ones(1, 2, dtype=torch.bool))
    b = TextFeatures(torch.full((2, 5, 3, 4), 2.0), torch.ones(2, 5, dtype=torch.bool))
    padded = a.pad_to(5)
    assert padded.features.shape == (1, 5, 3, 4) and padded.mask.tolist() == [[True, True, False, False, False]]
    assert padded.features[0, 2:].abs().sum() == 0
    both = TextFeatures.cat([a, b])
    assert both.features.shape == (3, 5, 3, 4) and both.mask.sum().item() == 2 + 10
    with pytest.raises(ValueError):
        b.pad_to(3)


@pytest.mark.parametrize("config,message", [
    ({"backend": "t5"}, "unknown text encoder backend"),
    ({"backend": "gpt-oss"}, "needs `path`"),
    ({"backend": "gpt-oss", "path": "/nonexistent/gpt-oss"}, "missing or has no config.json"),
    ({"backend": "minilm", "layers": [2, 4, 5, 6]}, "0..5"),
    ({"backend": "minilm", "max_lenght": 64}, "unknown minilm text encoder field"),
])
def test_bad_configs(config, message):
    with pytest.raises(UserError, match=message):
        build_text_encoder(config)


def test_load_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_text_encoder(tmp_path / "missing")
    with pytest.raises(UserError, match="holds no text encoder"):
        load_text_encoder(tmp_path)
    (tmp_path / CONFIG_NAME).write_text("{not json")
    with pytest.raises(UserError, match="malformed"):
        load_text_encoder(tmp_path)
    (tmp_path / CONFIG_NAME).unlink()
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(UserError, match="supported: gpt_oss, qwen3, bert"):
        load_text_encoder(tmp_path)
