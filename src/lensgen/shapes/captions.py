"""Captions from scene specs: `dense` (60-120 words, every object), `short` (GenEval form) and mixing.

Captions are exact because they are written from the spec, never from pixels. Relations use
GenEval's rule on the objects' boxes, so a caption never states a relation the scorer would reject.
Several templates per sentence keep captions from being one fixed string.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from lensgen.shapes.geometry import SYMMETRY
from lensgen.shapes.prompt import PREFIXES, SIGN_FORMS, ObjectReq, PromptSpec, Relation, format_prompt
from lensgen.shapes.relations import relative_position
from lensgen.shapes.scene import ObjectSpec, Scene, object_box
from lensgen.shapes.vocab import NUMBER_WORDS, article, plural, size_word

CAPTION_MODES = ("dense", "short", "mixed")
_LAYOUT = 1000  # pixels of the layout's short side when measuring boxes


def region(x: float, y: float) -> str:
    row = "top" if y < 1 / 3 else "bottom" if y > 2 / 3 else "middle"
    col = "left" if x < 1 / 3 else "right" if x > 2 / 3 else "centre"
    if row == "middle":
        return "centre" if col == "centre" else f"middle {col}"
    return f"{row} {col}"


def grey_word(level: int) -> str:
    return "light grey" if level >= 150 else "dark grey" if level < 120 else "grey"


def tilt_phrase(obj: ObjectSpec) -> str:
    if obj.shape == "circle":
        return ""
    period = SYMMETRY[obj.shape]
    t = obj.rotation % period
    t = t - period if t > period / 2 else t
    deg = int(round(abs(t) / 5.0)) * 5
    if deg == 0:
        return ", upright"
    if obj.shape == "square" and deg == 45:
        return ", turned 45 degrees like a diamond"
    return f", tilted about {deg} degrees {'clockwise' if t > 0 else 'counterclockwise'}"


def background_phrase(scene: Scene) -> str:
    bg = scene.background
    if bg.kind == "gradient":
        start, end = {"top to bottom": ("top", "bottom"), "left to right": ("left", "right"),
                      "diagonal": ("top left", "bottom right")}[bg.direction]
        a, b = ("darker", "lighter") if bg.level < bg.level2 else ("lighter", "darker")
        return f"a grey gradient, {a} at the {start} and {b} at the {end}"
    texture = {"stripes": " with faint diagonal stripes", "checks": " with a faint checkerboard pattern",
               "dots": " with a faint pattern of dots"}.get(bg.kind, "")
    return f"a plain {grey_word(bg.level)} background{texture}" if not texture else \
        f"a {grey_word(bg.level)} background{texture}"


def group_phrase(groups: Counter) -> str:
    parts = []
    for (colour, shape), n in groups.items():
        parts.append(f"{article(colour) if n == 1 else NUMBER_WORDS[n]} {colour} {plural(shape, n)}")
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _object_sentence(obj: ObjectSpec, seen: set, rng: np.random.Generator, tilt: bool = True) -> str:
    where = region(obj.x, obj.y)
    desc = f"{size_word(obj.radius)} {obj.colour} {obj.shape}"
    if (obj.colour, obj.shape) in seen:
        desc = f"another {desc}"
    else:
        desc = f"{article(desc)} {desc}"
    seen.add((obj.colour, obj.shape))
    tilt = tilt_phrase(obj) if tilt else ""
    forms = (f"{desc.capitalize()} sits in the {where}{tilt}.",
             f"In the {where} there is {desc}{tilt}.",
             f"The {where} holds {desc}{tilt}.")
    return forms[int(rng.integers(len(forms)))]


def _relation_sentences(scene: Scene, rng: np.random.Generator) -> list[str]:
    kinds = Counter((o.colour, o.shape) for o in scene.objects)
    unique = [o for o in scene.objects if kinds[(o.colour, o.shape)] == 1]
    h, w = _LAYOUT, int(round(_LAYOUT * scene.aspect))
    out = []
    for i in range(len(unique)):
        for j in range(i + 1, len(unique)):
            a, b = unique[i], unique[j]
            rels = sorted(relative_position(object_box(a, h, w), object_box(b, h, w)))
            if rels:
                rel = rels[int(rng.integers(len(rels)))]
                rel_text = {"left of": "to the left of", "right of": "to the right of"}.get(rel, rel)
                out.append(f"The {a.colour} {a.shape} is {rel_text} the {b.colour} {b.shape}.")
            if a.radius > 1.3 * b.radius or b.radius > 1.3 * a.radius:
                big, small = (a, b) if a.radius > b.radius else (b, a)
                out.append(f"The {big.colour} {big.shape} is larger than the {small.colour} {small.shape}.")
    rng.shuffle(out)
    return out


def dense_caption(scene: Scene, rng: np.random.Generator) -> str:
    """60-120 words: a summary, every object (size, colour, shape, rotation, region), the sign's text in quotes,
    the background, then relations and style while the word budget lasts."""
    objs = scene.objects
    groups = Counter((o.colour, o.shape) for o in objs)
    n = len(objs)
    what = f"a single {objs[0].colour} {objs[0].shape}" if n == 1 else \
        f"{NUMBER_WORDS[n]} flat shapes: {group_phrase(groups)}"
    bg = background_phrase(scene)
    openers = (f"A simple flat illustration of {what} on {bg}.",
               f"The image shows {what}, set against {bg}.",
               f"This picture contains {what} on {bg}.")
    sentences = [openers[int(rng.integers(len(openers)))]]
    order = sorted(range(n), key=lambda k: (objs[k].y > 0.5, objs[k].x)) if rng.random() < 0.5 else \
        list(rng.permutation(n))
    state = rng.bit_generator.state
    seen: set = set()
    body = [_object_sentence(objs[k], seen, rng) for k in order]
    if sum(len(x.split()) for x in sentences + body) > 100:  # crowded scene: keep within ~120 words
        rng.bit_generator.state = state
        seen = set()
        body = [_object_sentence(objs[k], seen, rng, tilt=False) for k in order]
    sentences += body
    if scene.sign is not None:
        s = scene.sign
        sentences.append(f'A white rectangular sign in the {region(s.x, s.y)} reads "{s.word}" '
                         f"in bold black capital letters.")
    by_shape = Counter(o.shape for o in objs)
    if n > 1:
        counts = ", ".join(f"{NUMBER_WORDS[c]} {plural(s, c)}" for s, c in by_shape.items())
        sentences.append(f"In total there are {NUMBER_WORDS[n]} objects ({counts}), none of them overlapping.")
    extras = _relation_sentences(scene, rng) + [
        "The shapes are solid and flat, with crisp edges, no outlines and no shadows.",
        "Nothing else appears in the scene; the composition is clean and evenly lit.",
    ]
    if n == 1:
        o = objs[0]
        extras.insert(0, f"The {o.shape} spans about {int(round(o.radius * 200 / 5.0)) * 5} percent of the "
                         f"image's shorter side and is the only shape in view.")
    target = int(rng.integers(75, 111))
    words = sum(len(s.split()) for s in sentences)
    for extra in extras:
        k = len(extra.split())
        if words >= target or words + k > 120:
            break
        sentences.append(extra)
        words += k
    return " ".join(sentences)


def short_spec(scene: Scene, rng: np.random.Generator) -> PromptSpec:
    """A GenEval-form description of the scene: counts, optional colours, or a position for two objects."""
    objs = scene.objects
    spec = PromptSpec(text=scene.sign.word if scene.sign else None)
    if len(objs) == 2 and objs[0].shape != objs[1].shape and rng.random() < 0.4:
        h, w = _LAYOUT, int(round(_LAYOUT * scene.aspect))
        rels = sorted(relative_position(object_box(objs[0], h, w), object_box(objs[1], h, w)))
        if rels:
            colours = rng.random() < 0.5
            spec.objects = [ObjectReq(o.shape, o.colour if colours else None) for o in objs]
            spec.relation = Relation(0, rels[int(rng.integers(len(rels)))], 1)
            return spec
    if rng.random() < 0.8:
        groups = Counter((o.colour, o.shape) for o in objs)
        spec.objects = [ObjectReq(s, c, k) for (c, s), k in groups.items()]
    else:
        spec.objects = [ObjectReq(s, None, k) for s, k in Counter(o.shape for o in objs).items()]
    return spec


def short_caption(scene: Scene, rng: np.random.Generator) -> str:
    return format_prompt(short_spec(scene, rng), int(rng.integers(len(PREFIXES))), int(rng.integers(len(SIGN_FORMS))))


def captions(scene: Scene, seed: int | tuple[int, ...]) -> dict[str, str]:
    """Both captions of a scene, deterministic per seed (an int or a tuple of ints)."""
    rng = np.random.default_rng([*(seed if isinstance(seed, tuple | list) else (seed,)), 7])
    return {"dense": dense_caption(scene, rng), "short": short_caption(scene, rng)}


def choose_caption(caps: dict[str, str], mode: str, rng: np.random.Generator, p_dense: float = 0.5) -> str:
    """The caption a training step uses: `dense`, `short`, or `mixed` (dense with probability p_dense)."""
    if mode not in CAPTION_MODES:
        raise ValueError(f"caption mode must be one of {CAPTION_MODES}, got '{mode}'")
    if mode == "mixed":
        mode = "dense" if rng.random() < p_dense else "short"
    return caps[mode]
