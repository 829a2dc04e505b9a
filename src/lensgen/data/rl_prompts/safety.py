"""The held-out check: one function that says why a prompt must not be an RL prompt (or that it may be).

RL training must never see ShapesEval: not its prompts, and not the keys its held-out tasks are drawn
from (`lensgen.shapes.heldout`). `heldout_violations(prompt)` returns one reason per problem:

- `eval prompt`: the prompt equals a ShapesEval prompt, compared lower case, in single spaces, and also
  without its "a photo of" style prefix (stricter than equality: a prefix swap is not a new prompt);
- `held-out pair`: two coloured objects of different colours and shapes form a held-out colour pair;
- `held-out position`: a relation between two shapes is a held-out position triple;
- `held-out word`: a sign word outside TRAIN_WORDS (in the grammar), or a held-out word in free text.

A prompt in the Shapes grammar is checked on its parsed structure. Every prompt, grammar or free text
(the LLM mode writes free text), is also scanned conservatively: each "colour shape" mention against
every other, each relation phrase ("left of", "under", "on top of", ...) against every ordered pair of
shapes mentioned, each quoted or all-capitals word against the held-out words. For free text the scan
is a best effort (a held-out word in lower case without quotes passes); for the grammar it is exact. The generator rejects candidates with this function and the tests run it
over the whole generated set, so a leak would fail them.
"""

from __future__ import annotations

import functools
import itertools
import re

from lensgen.errors import UserError
from lensgen.shapes.evalset import load_prompts
from lensgen.shapes.heldout import HELDOUT_WORDS, TRAIN_WORDS, is_heldout_pair, is_heldout_position
from lensgen.shapes.prompt import PREFIXES, PromptSpec, parse_prompt
from lensgen.shapes.vocab import COLOUR_NAMES, SHAPES

_SHAPE = rf"({'|'.join(SHAPES)})(?:s|es)?"
_MENTION = re.compile(rf"\b({'|'.join(COLOUR_NAMES)})\s+{_SHAPE}\b")
_SHAPE_WORD = re.compile(rf"\b{_SHAPE}\b")
_QUOTED = re.compile(r"\"([^\"]*)\"|\u201c([^\u201d]*)\u201d|'([^']*)'")
# relation phrases of free text, each mapped to the grammar's relation
_RELATION_PHRASES = {
    "left of": "left of", "to the left": "left of", "right of": "right of", "to the right": "right of",
    "above": "above", "on top of": "above", "over": "above", "below": "below", "beneath": "below",
    "under": "below", "underneath": "below",
}
_RELATION = re.compile(r"\b(" + "|".join(sorted(_RELATION_PHRASES, key=len, reverse=True)) + r")\b")


def normalise_prompt(text: str) -> str:
    """The form prompts are compared in (dedupe too): lower case, single spaces, no trailing full stop."""
    return " ".join(text.lower().split()).rstrip(".").strip()


def prompt_body(text: str) -> str:
    """The normalised prompt without a leading "a photo of" / "an image of" / "a picture of"."""
    text = normalise_prompt(text)
    for prefix in PREFIXES[:-1]:
        if text.startswith(prefix):
            return text[len(prefix):]
    return text


@functools.lru_cache(maxsize=1)
def eval_bodies() -> frozenset[str]:
    """Every ShapesEval prompt (all tasks), as `prompt_body` gives it."""
    return frozenset(prompt_body(spec.prompt) for spec in load_prompts())


def _parsed(prompt: str) -> PromptSpec | None:
    try:
        return parse_prompt(prompt)
    except UserError:
        return None


def _structural(spec: PromptSpec) -> list[str]:
    problems = []
    if spec.text is not None and spec.text not in TRAIN_WORDS:
        kind = "held-out word" if spec.text in HELDOUT_WORDS else "held-out word (not a training word)"
        problems.append(f"{kind}: {spec.text!r}")
    coloured = [(o.colour, o.shape) for o in spec.objects if o.colour]
    for a, b in itertools.combinations(coloured, 2):
        if is_heldout_pair(a, b):
            problems.append(f"held-out pair: {' '.join(a)} with {' '.join(b)}")
    if spec.relation is not None:
        a, b = spec.objects[spec.relation.a].shape, spec.objects[spec.relation.b].shape
        if is_heldout_position(a, spec.relation.relation, b):
            problems.append(f"held-out position: {a} {spec.relation.relation} {b}")
    return problems


def _scanned(prompt: str, both_orders: bool) -> list[str]:
    """The conservative text scan. Mentions are looked for everywhere, quotes included (a sign saying
    "STAR" counts as a star): that can only reject more, never let a held-out key through. Free text may
    name the second shape first ("under the star, a circle"), so there each pair is tried both ways."""
    problems = []
    quoted = " ".join("".join(groups) for groups in _QUOTED.findall(prompt)).upper().split()
    capitals = [w for w in re.findall(r"\b[A-Z]{3,}\b", prompt)]
    for word in dict.fromkeys(w.strip(".,!?;:") for w in [*quoted, *capitals]):
        if word in HELDOUT_WORDS:
            problems.append(f"held-out word: {word!r}")
    plain = prompt.lower()
    mentions = [(m.group(1), m.group(2)) for m in _MENTION.finditer(plain)]
    for a, b in itertools.combinations(mentions, 2):
        if is_heldout_pair(a, b):
            problems.append(f"held-out pair: {' '.join(a)} with {' '.join(b)}")
    relations = {_RELATION_PHRASES[m.group(1)] for m in _RELATION.finditer(plain)}
    shapes = [m.group(1) for m in _SHAPE_WORD.finditer(plain)]
    pairs = list(itertools.combinations(shapes, 2))
    for a, b in pairs + ([(b, a) for a, b in pairs] if both_orders else []):
        for rel in sorted(relations):
            if is_heldout_position(a, rel, b):
                problems.append(f"held-out position: {a} {rel} {b}")
    return problems


def heldout_violations(prompt: str | dict | object) -> list[str]:
    """Why this prompt (a string, a record dict or an RLPrompt) must not be used; [] when it may be."""
    text = prompt if isinstance(prompt, str) else prompt["prompt"] if isinstance(prompt, dict) else prompt.prompt
    problems = []
    if prompt_body(text) in eval_bodies():
        problems.append("eval prompt: it is a ShapesEval prompt")
    spec = _parsed(text)
    if spec is not None:
        problems += _structural(spec)
    problems += _scanned(text, both_orders=spec is None)
    return list(dict.fromkeys(problems))  # the scan repeats what the structure found: once each
