"""Dense re-captioning through an OpenAI-compatible VLM endpoint (vLLM, Ollama, OpenAI, Azure).

`run_captioning(IN, OUT, config)` is the Python entry point; `lensgen data caption` the command.
"""

from lensgen.data.caption.config import CaptionConfig, load_caption_config
from lensgen.data.caption.runner import caption_summary, run_captioning

__all__ = ["CaptionConfig", "caption_summary", "load_caption_config", "run_captioning"]
