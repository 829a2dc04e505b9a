"""The Shapes world: procedural scenes with exact captions, a renderer, and a judge that reads images back.

Scenes (scene.py) render at any size (render.py), come with dense and short captions (captions.py),
and are read back by `detect` (judge.py); rubrics.py turns a prompt into checkable reward items;
writer.py writes WebDataset shards; ShapesEval lives in lensgen.eval.shapes.
"""

from lensgen.shapes.captions import captions, choose_caption, dense_caption, short_caption
from lensgen.shapes.prompt import ObjectReq, PromptSpec, Relation, format_prompt, parse_prompt
from lensgen.shapes.render import render
from lensgen.shapes.scene import ObjectSpec, Scene, SceneConfig, generate_scene

__all__ = [
    "ObjectReq", "ObjectSpec", "PromptSpec", "Relation", "Scene", "SceneConfig", "captions", "choose_caption",
    "dense_caption", "format_prompt", "generate_scene", "parse_prompt", "render", "short_caption",
]
