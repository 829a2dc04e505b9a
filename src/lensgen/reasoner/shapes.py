"""The offline Shapes reasoner: a short Shapes prompt -> a planned scene -> the dense caption of that scene.

The shipped Shapes model saw dense captions (every object's size, colour, shape, tilt and region, the
background, relations) as well as short GenEval-style ones. This backend turns a short prompt into a dense
caption the way Lens' LLM does for real prompts: parse it with the Shapes grammar, lay out a scene that
satisfies its counts, colours, relation and sign (`groundtruth.scene_for_prompt`, the same planner
ShapesEval's ceiling uses), and describe that scene with the training captioner (`captions.dense_caption`),
stating the asked relation explicitly. Colours the prompt leaves open are chosen per seed. A prompt the
grammar cannot read passes through unchanged.
"""

from __future__ import annotations

import re

import numpy as np

from lensgen.errors import UserError
from lensgen.reasoner.base import Reasoner, Rewrite
from lensgen.shapes.captions import background_phrase, dense_caption, region
from lensgen.shapes.groundtruth import scene_for_prompt
from lensgen.shapes.prompt import PromptSpec, parse_prompt
from lensgen.shapes.scene import Scene
from lensgen.shapes.vocab import NUMBER_WORDS, plural

# Lead-ins people type before a Shapes prompt; dropped before parsing ("draw two red circles").
_LEAD_IN = re.compile(r"^\s*(?:please\s+)?(?:draw|paint|render|show(?:\s+me)?|generate|create|make)\s+",
                      re.IGNORECASE)
_REL_TEXT = {"left of": "to the left of", "right of": "to the right of"}


def _group(scene: Scene, spec: PromptSpec, index: int) -> str:
    """'the red circle' or 'the two red circles': object group `index` of the spec, as laid out."""
    start = sum(o.count for o in spec.objects[:index])
    req, obj = spec.objects[index], scene.objects[start]
    return f"the {NUMBER_WORDS[req.count] + ' ' if req.count > 1 else ''}{obj.colour} {plural(req.shape, req.count)}"


def relation_sentence(scene: Scene, spec: PromptSpec) -> str:
    """The prompt's relation, said of the planned scene's objects (their colours are now known)."""
    r = spec.relation
    a, b = _group(scene, spec, r.a), _group(scene, spec, r.b)
    verb = "are" if spec.objects[r.a].count > 1 else "is"
    return f"{a[0].upper()}{a[1:]} {verb} {_REL_TEXT.get(r.relation, r.relation)} {b}."


def sign_only_caption(scene: Scene) -> str:
    """A scene with a sign and no shapes (the dense captioner always has at least one shape)."""
    s = scene.sign
    return (f"A simple flat illustration of a white rectangular sign on {background_phrase(scene)}. "
            f'The sign sits in the {region(s.x, s.y)} and reads "{s.word}" in bold black capital letters. '
            "Nothing else appears in the scene; the composition is clean and evenly lit.")


class ShapesReasoner(Reasoner):
    name = "shapes"
    seeded = True

    def plan(self, prompt: str, aspect: float = 1.0, seed: int = 0) -> tuple[PromptSpec, Scene]:
        """The parsed prompt and a scene satisfying it; UserError / ValueError when there is none."""
        spec = parse_prompt(_LEAD_IN.sub("", prompt))
        return spec, scene_for_prompt(spec, seed, aspect)

    def rewrite(self, prompt: str, aspect: float = 1.0, seed: int = 0) -> Rewrite:
        try:
            spec, scene = self.plan(prompt, aspect, seed)
        except (UserError, ValueError) as err:
            return Rewrite(prompt, prompt, self.name, fallback=True, reason=f"not a Shapes prompt: {err}")
        if not scene.objects:
            return Rewrite(prompt, sign_only_caption(scene), self.name)
        text = dense_caption(scene, np.random.default_rng([seed, 13]))
        if spec.relation is not None and (sentence := relation_sentence(scene, spec)) not in text:
            text = f"{text} {sentence}"
        return Rewrite(prompt, text, self.name)
