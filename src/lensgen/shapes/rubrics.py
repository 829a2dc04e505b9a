"""Rubrics: checkable items for a prompt or scene, scored on an image by the judge (the RL reward).

Up to 10 items across Lens's five dimensions, plus one global rule:
- attributes: each asked shape is present (a blob close to it earns partial credit); a sign reads its
  word (1 - normalised edit distance);
- colour: each group's objects have the asked colour;
- quantity: each group has exactly the asked number;
- spatial: asked relations (graded GenEval rule), then absolute regions for scenes;
- interaction: in this world, relative size ("the red circle is larger than the blue star");
- global: no malformed blobs, fragments or objects beyond those asked for.
Items give partial credit (a count off by one, a relation half-way), and the total is
global x mean x (0.25 + 0.75 x worst), with mean the weighted mean of the items and worst the lowest
item: a partly right image earns something and the reward moves smoothly with each item, but an
image that fails any one item outright earns at most 0.25.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field

import numpy as np
from PIL import Image

from lensgen.shapes.captions import region
from lensgen.shapes.judge import DetectedObject, Detection, detect
from lensgen.shapes.ocr import text_similarity
from lensgen.shapes.prompt import ObjectReq, PromptSpec, parse_prompt
from lensgen.shapes.relations import relation_strength, relative_position
from lensgen.shapes.scene import Scene, object_box
from lensgen.shapes.shapefit import template_distance
from lensgen.shapes.vocab import NUMBER_WORDS, plural

DIMENSIONS = ("attributes", "spatial", "quantity", "interaction", "colour")
MAX_ITEMS = 10


@dataclass
class RubricItem:
    dimension: str  # one of DIMENSIONS
    kind: str  # shape | text | colour | count | relation | region | larger
    description: str
    params: dict = field(default_factory=dict)
    weight: float = 1.0


@dataclass
class Rubrics:
    items: list[RubricItem]
    expected: dict[str, int]  # shape -> how many objects of it the prompt accounts for
    exact: bool  # whether further objects count as extra

    def to_dict(self) -> dict:
        """A JSON-ready form (the RL prompt files store it); `from_dict` reads it back."""
        return {"items": [asdict(it) for it in self.items], "expected": dict(self.expected), "exact": self.exact}

    @classmethod
    def from_dict(cls, d: dict) -> Rubrics:
        return cls([RubricItem(**it) for it in d["items"]], {k: int(v) for k, v in d["expected"].items()},
                   bool(d["exact"]))


@dataclass
class RubricScore:
    items: list[tuple[RubricItem, float]]
    global_score: float
    total: float
    detection: Detection | None = None


def _name(shape: str, colour: str | None) -> str:
    return f"{colour} {shape}" if colour else shape


def _from_spec(spec: PromptSpec) -> list[RubricItem]:
    items: list[RubricItem] = []
    for o in spec.objects:
        items.append(RubricItem("attributes", "shape", f"there is a {o.shape}", {"shape": o.shape}))
    for o in spec.objects:
        if o.colour:
            items.append(RubricItem("colour", "colour", f"the {plural(o.shape, o.count)} "
                                    f"{'is' if o.count == 1 else 'are'} {o.colour}",
                                    {"shape": o.shape, "colour": o.colour, "count": o.count}))
    for o in spec.objects:
        items.append(RubricItem("quantity", "count", f"there {'is' if o.count == 1 else 'are'} exactly "
                                f"{NUMBER_WORDS[o.count]} {_name(plural(o.shape, o.count), o.colour)}",
                                {"shape": o.shape, "colour": o.colour, "count": o.count}))
    if spec.relation is not None:
        a, b = spec.objects[spec.relation.a], spec.objects[spec.relation.b]
        items.append(RubricItem("spatial", "relation", f"the {_name(a.shape, a.colour)} is {spec.relation.relation} "
                                f"the {_name(b.shape, b.colour)}",
                                {"a": [a.shape, a.colour], "relation": spec.relation.relation, "b": [b.shape, b.colour]},
                                weight=2.0))
    if spec.text:
        items.append(RubricItem("attributes", "text", f'a sign reads "{spec.text}"', {"word": spec.text}, weight=2.0))
    return items


def _from_scene(scene: Scene) -> list[RubricItem]:
    groups = Counter((o.colour, o.shape) for o in scene.objects)
    spec = PromptSpec([ObjectReq(s, c, n) for (c, s), n in groups.items()], text=scene.sign.word if scene.sign else None)
    items = _from_spec(spec)
    unique = [o for o in scene.objects if groups[(o.colour, o.shape)] == 1]
    h, w = 1000, int(round(1000 * scene.aspect))
    extra_rel, extra_size, extra_region = [], [], []
    for i, a in enumerate(unique):
        extra_region.append(RubricItem("spatial", "region", f"the {a.colour} {a.shape} is in the "
                                       f"{region(a.x, a.y)}", {"a": [a.shape, a.colour], "region": region(a.x, a.y)}))
        for b in unique[i + 1:]:
            rels = sorted(relative_position(object_box(a, h, w), object_box(b, h, w)))
            if rels:
                extra_rel.append(RubricItem("spatial", "relation", f"the {a.colour} {a.shape} is {rels[0]} the "
                                            f"{b.colour} {b.shape}", {"a": [a.shape, a.colour], "relation": rels[0],
                                                                      "b": [b.shape, b.colour]}))
            big, small = (a, b) if a.radius >= b.radius else (b, a)
            if big.radius > 1.3 * small.radius:
                extra_size.append(RubricItem("interaction", "larger", f"the {big.colour} {big.shape} is larger than "
                                             f"the {small.colour} {small.shape}",
                                             {"a": [big.shape, big.colour], "b": [small.shape, small.colour]}))
    # interleave so every dimension is represented before the list is cut at MAX_ITEMS
    for extra in (extra_rel[:2], extra_size[:1], extra_region[:1], extra_rel[2:], extra_size[1:], extra_region[1:]):
        items += extra
    return items


def rubrics_for(scene_or_prompt: Scene | PromptSpec | dict | str, max_items: int = MAX_ITEMS) -> Rubrics:
    """Rubric items (at most `max_items`, most essential first) for a scene, a prompt spec or a prompt string."""
    x = scene_or_prompt
    if isinstance(x, str):
        x = parse_prompt(x)
    elif isinstance(x, dict):
        x = Scene.from_dict(x) if "background" in x else PromptSpec.from_dict(x)
    if isinstance(x, Scene):
        items = _from_scene(x)
        expected = Counter(o.shape for o in x.objects)
    else:
        items = _from_spec(x)
        expected = Counter()
        for o in x.objects:
            expected[o.shape] += o.count
    return Rubrics(items[:max_items], dict(expected), exact=True)


def _candidates(det: Detection, ref: list) -> list[DetectedObject]:
    shape, colour = ref
    return (det.of(shape, colour) if colour else []) or det.of(shape)


SHAPE_MARGIN_SCALE = 0.2  # template-cosine margin over which an unrecognised blob earns its partial credit
SHAPE_CREDITS = ("fixed", "pair")


def shape_credit(det: Detection, shape: str, margin: str = "fixed") -> float:
    """1 when the judge recognises the shape; otherwise partial credit, up to 1/2, for the blob that comes
    closest: 1/2 + (its cosine with the shape's templates - its best other shape's) / scale. A blob that is
    nearly a hexagon but reads as a circle earns almost 1/2; that gradient is what lets RL turn "found 0"
    blobs into shapes.

    margin "fixed": scale = SHAPE_MARGIN_SCALE for every pair of shapes. "pair": scale = twice the two
    shapes' template distance (`shapefit.template_distance`), so a perfect instance of the other shape earns
    0 and a blob half-way earns 1/4 whichever the pair. Hexagons and circles are 0.011 apart: with the fixed
    scale every disc earns 0.45-0.5 on a hexagon prompt and the credit barely tells discs apart, with the
    pair scale it spans 0 to 1/2 between a disc and a hexagon."""
    if margin not in SHAPE_CREDITS:
        raise ValueError(f"shape credit margin '{margin}'; expected one of {', '.join(SHAPE_CREDITS)}")
    if det.of(shape):
        return 1.0
    best = 0.0
    for o in det.objects:
        if shape not in o.shape_scores:
            continue
        others = {k: v for k, v in o.shape_scores.items() if k != shape}
        if not others:
            continue
        rival = max(others, key=others.get)
        scale = SHAPE_MARGIN_SCALE if margin == "fixed" else 2.0 * template_distance(shape, rival)
        best = max(best, float(np.clip(0.5 + (o.shape_scores[shape] - others[rival]) / scale, 0.0, 0.5)))
    return best


def _item_score(item: RubricItem, det: Detection, shape_margin: str = "fixed") -> float:
    p = item.params
    if item.kind == "shape":
        return shape_credit(det, p["shape"], shape_margin)
    if item.kind == "text":
        return text_similarity(det.text or "", p["word"])
    if item.kind == "colour":
        objs = det.of(p["shape"])
        return min(1.0, sum(o.colour == p["colour"] for o in objs) / p["count"]) if objs else 0.0
    if item.kind == "count":
        k = len(det.of(p["shape"], p["colour"]))
        return max(0.0, 1.0 - abs(k - p["count"]) / p["count"])
    if item.kind in ("relation", "larger", "region"):
        aa = _candidates(det, p["a"])
        if not aa:
            return 0.0
        if item.kind == "region":
            want = p["region"]
            got = [region(o.centre[0] / det.width, o.centre[1] / det.height) for o in aa]
            return max(1.0 if g == want else 0.5 if set(g.split()) & set(want.split()) else 0.0 for g in got)
        bb = _candidates(det, p["b"])
        if not bb:
            return 0.0
        if item.kind == "relation":
            return max(relation_strength(a.box, b.box, p["relation"]) for a in aa for b in bb)
        return max(float(np.clip((a.area / b.area - 1.0) / 0.5, 0, 1)) for a in aa for b in bb)
    raise ValueError(f"unknown rubric kind '{item.kind}'")


def global_score(rubrics: Rubrics, det: Detection) -> float:
    """The global rule: every object well formed, no fragments, no malformed blobs, nothing extra."""
    shapes = det.shapes()
    if not shapes:
        return 0.0 if rubrics.expected else 1.0
    form = float(np.mean([np.clip((o.score - 0.85) / 0.12, 0.0, 1.0) for o in shapes]))
    have = Counter(o.shape for o in shapes)
    extra = sum(max(0, n - rubrics.expected.get(s, 0)) for s, n in have.items()) if rubrics.exact else 0
    malformed = sum(o.shape is None for o in det.objects)
    return form * 0.7 ** (extra + malformed) * 0.9 ** min(det.fragments, 3)


def score(image: Image.Image | np.ndarray, rubrics: Rubrics, detection: Detection | None = None,
          shape_margin: str = "fixed") -> RubricScore:
    """Per-item scores in [0, 1], the global rule, and the graded total in [0, 1]; `shape_margin`: how shape
    items credit unrecognised blobs (`shape_credit`)."""
    needs_text = any(it.kind == "text" for it in rubrics.items)
    det = detection if detection is not None and (detection.text is not None or not needs_text) \
        else detect(image, ocr=needs_text)
    scored = [(it, float(_item_score(it, det, shape_margin))) for it in rubrics.items]
    weights = np.array([it.weight for it, _ in scored]) if scored else np.ones(1)
    mean = float(np.dot(weights, [s for _, s in scored]) / weights.sum()) if scored else 1.0
    worst = min((s for _, s in scored), default=1.0)
    g = global_score(rubrics, det)
    return RubricScore(scored, g, g * mean * (0.25 + 0.75 * worst), det)
