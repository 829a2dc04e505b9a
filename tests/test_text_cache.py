"""The text-feature cache gives the encoder's own features, computes each prompt once, and keys by encoder."""

import torch

from lensgen.models.text_encoder import build_text_encoder
from lensgen.train.text_cache import CachedTextEncoder

PROMPTS = ["a red circle", "", "two blue squares to the left of a large yellow star", "a red circle"]


def test_cache_equals_the_encoder_and_encodes_each_prompt_once(tmp_path):
    encoder = build_text_encoder({"backend": "minilm", "layers": [1, 2], "max_length": 32})
    want = encoder.encode(PROMPTS)
    cached = CachedTextEncoder(encoder, tmp_path / "cache")
    got = cached.encode(PROMPTS)
    assert torch.equal(got.mask, want.mask)
    torch.testing.assert_close(got.features, want.features, atol=1e-5, rtol=1e-5)
    assert cached.misses == 3  # three distinct prompts
    again = cached.encode(list(reversed(PROMPTS)))
    assert cached.misses == 3 and cached.hits == 4  # every occurrence of the second call
    torch.testing.assert_close(again.features, want.features.flip(0), atol=1e-5, rtol=1e-5)

    # a new process reads the folder: nothing is re-encoded
    reread = CachedTextEncoder(encoder, tmp_path / "cache")
    torch.testing.assert_close(reread.encode(PROMPTS).features, want.features, atol=1e-5, rtol=1e-5)
    assert reread.misses == 0 and len(list((tmp_path / "cache").rglob("*.safetensors"))) == 3

    # another layer set never gets these features
    other = CachedTextEncoder(build_text_encoder({"backend": "minilm", "layers": [3, 4], "max_length": 32}),
                              tmp_path / "cache")
    other.encode(PROMPTS[:1])
    assert other.misses == 1


def test_only_empty_prompts_and_memory_bound():
    encoder = build_text_encoder({"backend": "minilm", "layers": [1], "max_length": 16})
    cached = CachedTextEncoder(encoder, None, memory_items=2)
    empty = cached.encode(["", " "])
    assert empty.features.shape[:2] == (2, 1) and not empty.mask.any() and not empty.features.any()
    cached.encode(["a", "b", "c"])
    assert len(cached.memory) == 2
