"""The Shapes mode: an RL prompt set from the Shapes grammar, offline and deterministic from a seed.

Seven top-level categories, the base prompt's subject: the six shapes ("a circle") and the sign
('a sign that says "CAT"'). Each base is expanded along Lens's five dimensions:

- colour: every object coloured, 1-3 different shapes in different colours (colour binding);
- quantity: the subject 2-6 times (a sign's scene: 2-3), optionally coloured, sometimes with a second group;
- spatial: the subject left of / right of / above / below another shape, each optionally coloured;
- interaction: the subject together with one or two other shapes (this grammar has no size words, so
  co-occurrence is the interaction it can state), a few of them coloured;
- attributes: a sign with a training word, with the subject (shapes) or alone (the sign category).

Candidates are drawn at random, written with a random prefix and sign form, and kept only when they
parse back to their own structure, fit the Shapes world (6 objects at most, 3 beside a sign), have a
rubric of at most 10 items, are new (normalised text) and have no held-out violation
(`safety.heldout_violations`). Cells (category x dimension) are filled round-robin, so any n is
spread evenly; a cell whose space runs out stops and the others carry on.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from lensgen.data.rl_prompts import safety
from lensgen.data.rl_prompts.config import RLPromptsConfig
from lensgen.data.rl_prompts.records import GLOBAL_RULE, RLPrompt, write_rl_prompts
from lensgen.data.rl_prompts.safety import normalise_prompt
from lensgen.errors import UserError
from lensgen.io import check_writable
from lensgen.shapes.heldout import TRAIN_WORDS
from lensgen.shapes.prompt import (
    PREFIXES,
    SIGN_FORMS,
    ObjectReq,
    PromptSpec,
    Relation,
    format_prompt,
    parse_prompt,
)
from lensgen.shapes.rubrics import DIMENSIONS, MAX_ITEMS, rubrics_for
from lensgen.shapes.vocab import COLOUR_NAMES, RELATIONS, SHAPES

SIGN = "sign"
CATEGORIES: tuple[str, ...] = (*SHAPES, SIGN)
DEFAULT_N = 8406  # Lens-RL-8K
DEFAULT_SEED = 0
MAX_OBJECTS, MAX_OBJECTS_WITH_SIGN = 6, 3  # the Shapes world's limits (scene.SceneConfig)
MAX_MISSES = 3000  # consecutive rejected candidates before a cell counts as full


def _colour(rng: random.Random, p: float) -> str | None:
    return rng.choice(COLOUR_NAMES) if rng.random() < p else None


def _others(rng: random.Random, subject: str | None, k: int) -> list[str]:
    return rng.sample([s for s in SHAPES if s != subject], k)


def _colour_binding(rng: random.Random, subject: str | None) -> PromptSpec:
    k = rng.choice((1, 2, 2, 3)) if subject else rng.choice((1, 2))
    shapes = ([subject] if subject else []) + _others(rng, subject, k - (1 if subject else 0))
    rng.shuffle(shapes)
    return PromptSpec([ObjectReq(s, c) for s, c in zip(shapes, rng.sample(COLOUR_NAMES, len(shapes)))])


def _quantity(rng: random.Random, subject: str | None) -> PromptSpec:
    shape = subject or rng.choice(SHAPES)
    limit = MAX_OBJECTS if subject else MAX_OBJECTS_WITH_SIGN
    groups = [ObjectReq(shape, _colour(rng, 0.5), rng.randint(2, limit))]
    if subject and groups[0].count < limit and rng.random() < 0.5:
        groups.append(ObjectReq(_others(rng, shape, 1)[0], _colour(rng, 0.5), rng.randint(1, limit - groups[0].count)))
        rng.shuffle(groups)
    return PromptSpec(groups)


def _spatial(rng: random.Random, subject: str | None) -> PromptSpec:
    a = subject or rng.choice(SHAPES)
    pair = [ObjectReq(a, _colour(rng, 0.5)), ObjectReq(_others(rng, a, 1)[0], _colour(rng, 0.5))]
    rng.shuffle(pair)
    return PromptSpec(pair, Relation(0, rng.choice(RELATIONS), 1))


def _interaction(rng: random.Random, subject: str | None) -> PromptSpec:
    k = rng.choice((2, 2, 3))
    shapes = ([subject] if subject else []) + _others(rng, subject, k - (1 if subject else 0))
    rng.shuffle(shapes)
    return PromptSpec([ObjectReq(s, _colour(rng, 0.3)) for s in shapes])


def _attributes(rng: random.Random, subject: str | None) -> PromptSpec:
    if subject is None:
        return PromptSpec()  # the sign alone: its word is the attribute
    objects = [ObjectReq(subject, _colour(rng, 0.5))]
    if rng.random() < 0.3:
        objects.append(ObjectReq(_others(rng, subject, 1)[0], _colour(rng, 0.5)))
        rng.shuffle(objects)
    return PromptSpec(objects, text=rng.choice(TRAIN_WORDS))


EXPANDERS: dict[str, Callable[[random.Random, str | None], PromptSpec]] = {
    "attributes": _attributes, "spatial": _spatial, "quantity": _quantity, "interaction": _interaction,
    "colour": _colour_binding,
}


def candidate(rng: random.Random, category: str, dimension: str) -> PromptSpec:
    """One random expansion of the category's base prompt along `dimension`, with its prompt text."""
    subject = None if category == SIGN else category
    spec = EXPANDERS[dimension](rng, subject)
    if subject is None:
        spec.text = rng.choice(TRAIN_WORDS)
    spec.prompt = format_prompt(spec, rng.randrange(len(PREFIXES)), rng.randrange(len(SIGN_FORMS)))
    return spec


def _same(a: PromptSpec, b: PromptSpec) -> bool:
    return (a.objects, a.relation, a.text) == (b.objects, b.relation, b.text)


def rejection(spec: PromptSpec, seen: set[str]) -> str | None:
    """Why the candidate is not kept (None: keep it)."""
    if normalise_prompt(spec.prompt) in seen:
        return "duplicate"
    if not _same(parse_prompt(spec.prompt), spec):
        return "does not parse back"
    n = sum(o.count for o in spec.objects)
    if n > (MAX_OBJECTS_WITH_SIGN if spec.text else MAX_OBJECTS):
        return "too many objects for the world"
    if len(rubrics_for(spec, max_items=MAX_ITEMS + 1).items) > MAX_ITEMS:
        return "more than 10 rubric items"
    problems = safety.heldout_violations(spec.prompt)
    return problems[0].split(":")[0] if problems else None


def generate_shapes_prompts(n: int = DEFAULT_N, seed: int = DEFAULT_SEED) -> tuple[list[RLPrompt], dict]:
    """n prompts (round-robin over category x dimension) and what was rejected on the way, by reason."""
    if n < 1:
        raise UserError(f"n: expected a positive number of prompts, got {n}")
    rng = random.Random(seed)
    cells = [(c, d) for c in CATEGORIES for d in DIMENSIONS]
    made: Counter = Counter()
    rejected: Counter = Counter()
    full: set[tuple[str, str]] = set()
    seen: set[str] = set()
    records: list[RLPrompt] = []
    while len(records) < n and len(full) < len(cells):
        for cell in cells:
            if len(records) == n:
                break
            if cell in full:
                continue
            record = _fill(rng, cell, made[cell], seen, rejected)
            if record is None:
                full.add(cell)
                continue
            made[cell] += 1
            records.append(record)
    if len(records) < n:
        raise UserError(f"n: only {len(records)} distinct held-out-safe Shapes prompts exist in this grammar "
                        f"(asked for {n}); choose n <= {len(records)}")
    return records, dict(sorted(rejected.items()))


def _fill(rng: random.Random, cell: tuple[str, str], index: int, seen: set[str], rejected: Counter
          ) -> RLPrompt | None:
    """The cell's next prompt, or None when MAX_MISSES candidates in a row were rejected."""
    category, dimension = cell
    for _ in range(MAX_MISSES):
        spec = candidate(rng, category, dimension)
        reason = rejection(spec, seen)
        if reason is None:
            seen.add(normalise_prompt(spec.prompt))
            return RLPrompt(f"{category}-{dimension}-{index:05d}", spec.prompt, category, dimension,
                            rubrics_for(spec), GLOBAL_RULE)
        rejected[reason] += 1
    return None


def write_shapes_prompts(out: str | Path, config: RLPromptsConfig) -> dict:
    """Generate (config.n or 8406, config.seed), check the whole set once more, write OUT and summary.json."""
    n = config.n or DEFAULT_N
    check_writable(out)
    records, rejected = generate_shapes_prompts(n, config.seed)
    leaks = [f"{r.id}: {problems}" for r in records if (problems := safety.heldout_violations(r.prompt))]
    if leaks:  # cannot happen while the generator rejects with the same function: a bug, never written
        raise RuntimeError(f"{len(leaks)} generated prompts break the held-out rules, e.g. {leaks[0]}")
    info = {"mode": "shapes", "n": n, "seed": config.seed, "categories": list(CATEGORIES),
            "dimensions": list(DIMENSIONS), "rejected": rejected}
    return write_rl_prompts(out, records, info)
