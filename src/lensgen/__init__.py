"""lensgen: the Lens text-to-image recipe, from data curation to serving, at laptop and cluster scale."""

__version__ = "0.1.0"
