import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def untrained_pipeline():
    """A pipeline of the shapes-tiny architecture with fresh random weights (the shipped VAE and MiniLM)."""
    import torch

    from lensgen.inference.pipeline import LensPipeline, PipelineDefaults
    from lensgen.models.text_encoder import build_text_encoder
    from lensgen.models.transformer import LensTransformer2DModel, preset
    from lensgen.models.vae import build_codec

    torch.manual_seed(0)
    transformer = LensTransformer2DModel(preset("shapes-tiny"))
    defaults = PipelineDefaults(height=64, width=64, steps=20, cfg=5.0, max_side=256)
    return LensPipeline(transformer, build_codec({"backend": "flux2-vae"}), build_text_encoder({"backend": "minilm"}),
                        defaults, name="shapes-tiny (untrained)")


@pytest.fixture(scope="session")
def shipped_pipeline():
    """The shipped Shapes model, loaded once per session (the serving and reasoner tests share it)."""
    from lensgen.inference.pipeline import DEFAULT_MODEL_DIR, LensPipeline

    return LensPipeline.from_pretrained(DEFAULT_MODEL_DIR)
