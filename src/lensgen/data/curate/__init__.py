"""Data curation: the nine Lens cleaning steps, from a folder on a laptop to shards on a Ray cluster.

`run_curation(IN, OUT, config)` is the Python entry point; `lensgen data curate` the command. See
docs/data.md for what each step scores and why its default threshold is what it is.
"""

from lensgen.data.curate.config import CurateConfig, load_config
from lensgen.data.curate.manifest import read_manifest
from lensgen.data.curate.pipeline import run_curation

__all__ = ["CurateConfig", "load_config", "read_manifest", "run_curation"]
