"""lensgen: the Lens text-to-image recipe at laptop and cluster scale.

Working today: data curation and dense captioning, the Shapes world, mixed-resolution flow-matching
pretraining, RL post-training (DiffusionNFT), few-step distillation, inference with a prompt Reasoner,
serving, and ShapesEval.
"""

from pathlib import Path

__version__ = "0.1.0"

# The models shipped inside the package (each folder has its MODEL_CARD.md), usable by name.
SHIPPED_MODELS_DIR = Path(__file__).parent / "assets"
