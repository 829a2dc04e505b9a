"""lensgen: the Lens text-to-image recipe at laptop and cluster scale.

Working today: data curation and dense captioning, the Shapes world, mixed-resolution flow-matching
pretraining, RL post-training (DiffusionNFT), few-step distillation, inference with a prompt Reasoner,
serving, and ShapesEval.
"""

__version__ = "0.1.0"
