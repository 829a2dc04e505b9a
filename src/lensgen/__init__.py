"""lensgen: the Lens text-to-image recipe at laptop and cluster scale.

Working today: data curation and dense captioning, the Shapes world, mixed-resolution flow-matching
pretraining, inference and ShapesEval. RL post-training, distillation, the Reasoner and serving are to come.
"""

__version__ = "0.1.0"
