"""The RL prompt file: one JSON record per prompt, written atomically, read back with every field checked.

A record (both modes write the same schema):

    {"id": "circle-colour-00012",            # unique in the file
     "prompt": "a photo of a red circle and a blue star",
     "category": "circle",                    # the top-level category of its base prompt
     "dimension": "colour",                   # the expansion: attributes | spatial | quantity | interaction | colour
     "rubric": {"items": [{"dimension": "attributes", "kind": "shape", "description": "there is a circle",
                           "params": {"shape": "circle"}, "weight": 1.0}, ...],   # 1 to 10 items
                "expected": {"circle": 1, "star": 1},   # shape -> objects the prompt accounts for ({} for LLM)
                "exact": true},                          # whether further objects count as extra
     "global_rule": "structurally coherent and physically plausible",
     "seed": "..."}                           # LLM mode only: the seed prompt it expands

`rubric` is `lensgen.shapes.rubrics.Rubrics.to_dict()`, so `Rubrics.from_dict` reads it back. Shapes
items have the Shapes judge's kinds (shape, text, colour, count, relation); an LLM-written item has
kind "vlm": its description is the check, for a VLM judge to read (params {}, weight 1.0).
`summary.json` beside the file counts records per category and dimension and says how it was made.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lensgen.data.rl_prompts.safety import heldout_violations, normalise_prompt
from lensgen.errors import UserError
from lensgen.io import atomic_write_json, atomic_write_text
from lensgen.shapes.rubrics import DIMENSIONS, MAX_ITEMS, RubricItem, Rubrics

GLOBAL_RULE = "structurally coherent and physically plausible"
VLM_KIND = "vlm"  # an item checked by reading its description (LLM-written rubrics)
MAX_PROMPT_CHARS = 1000
MAX_DESCRIPTION_CHARS = 400
RECORD_FIELDS = ("id", "prompt", "category", "dimension", "rubric", "global_rule", "seed")
ITEM_FIELDS = ("dimension", "kind", "description", "params", "weight")


@dataclass
class RLPrompt:
    id: str
    prompt: str
    category: str
    dimension: str  # one of DIMENSIONS: the expansion this prompt is
    rubric: Rubrics
    global_rule: str = GLOBAL_RULE
    seed: str | None = None  # LLM mode: the seed prompt expanded

    def to_dict(self) -> dict[str, Any]:
        d = {"id": self.id, "prompt": self.prompt, "category": self.category, "dimension": self.dimension,
             "rubric": rubric_dict(self.rubric), "global_rule": self.global_rule}
        if self.seed is not None:
            d["seed"] = self.seed
        return d


def rubric_dict(rubric: Rubrics) -> dict[str, Any]:
    """`Rubrics.to_dict()`, the same dict, without dataclasses.asdict's deep copy (4x faster on 8k records)."""
    items = [{"dimension": it.dimension, "kind": it.kind, "description": it.description, "params": it.params,
              "weight": it.weight} for it in rubric.items]
    return {"items": items, "expected": dict(rubric.expected), "exact": rubric.exact}


def vlm_item(dimension: str, description: str) -> RubricItem:
    return RubricItem(dimension, VLM_KIND, description, {}, 1.0)


# --- reading --------------------------------------------------------------------------------------------

def _fail(where: str, name: str, expected: str, got: Any) -> UserError:
    shown = repr(got) if len(repr(got)) <= 80 else repr(got)[:77] + "..."
    return UserError(f"{where}: field '{name}': expected {expected}, got {shown}")


def _text(d: dict, name: str, where: str, limit: int = MAX_PROMPT_CHARS, prefix: str = "") -> str:
    value = d.get(name)
    if not isinstance(value, str) or not value.strip() or len(value) > limit:
        raise _fail(where, prefix + name, f"a non-empty string of at most {limit} characters", value)
    return value


def _item(d: Any, where: str, name: str) -> RubricItem:
    if not isinstance(d, dict):
        raise _fail(where, name, "an object with dimension and description", d)
    unknown = sorted(set(d) - set(ITEM_FIELDS))
    if unknown:
        raise _fail(where, f"{name}.{unknown[0]}", f"only the fields {', '.join(ITEM_FIELDS)}", unknown[0])
    if d.get("dimension") not in DIMENSIONS:
        raise _fail(where, f"{name}.dimension", f"one of {', '.join(DIMENSIONS)}", d.get("dimension"))
    description = _text(d, "description", where, MAX_DESCRIPTION_CHARS, prefix=f"{name}.")
    kind = d.get("kind", VLM_KIND)
    if not isinstance(kind, str) or not kind:
        raise _fail(where, f"{name}.kind", "a non-empty string", kind)
    params = d.get("params", {})
    if not isinstance(params, dict):
        raise _fail(where, f"{name}.params", "an object", params)
    weight = d.get("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not weight > 0:
        raise _fail(where, f"{name}.weight", "a positive number", weight)
    return RubricItem(d["dimension"], kind, description, params, float(weight))


def _rubric(d: Any, where: str) -> Rubrics:
    if not isinstance(d, dict) or not isinstance(d.get("items"), list):
        raise _fail(where, "rubric", "an object with a list of items", d)
    items = d["items"]
    if not 1 <= len(items) <= MAX_ITEMS:
        raise _fail(where, "rubric.items", f"1 to {MAX_ITEMS} items", f"{len(items)} items")
    expected = d.get("expected", {})
    if not isinstance(expected, dict) or not all(
            isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and v >= 0
            for k, v in expected.items()):
        raise _fail(where, "rubric.expected", "an object of shape -> count", expected)
    exact = d.get("exact", False)
    if not isinstance(exact, bool):
        raise _fail(where, "rubric.exact", "true or false", exact)
    return Rubrics([_item(it, where, f"rubric.items[{i}]") for i, it in enumerate(items)], dict(expected), exact)


def record_from_dict(d: Any, where: str) -> RLPrompt:
    """One record, every field checked; errors name `where` (file:line) and the field."""
    if not isinstance(d, dict):
        raise UserError(f"{where}: expected a JSON object (one record per line), got {type(d).__name__}")
    unknown = sorted(set(d) - set(RECORD_FIELDS))
    if unknown:
        raise _fail(where, unknown[0], f"only the fields {', '.join(RECORD_FIELDS)}", unknown[0])
    if d.get("dimension") not in DIMENSIONS:
        raise _fail(where, "dimension", f"one of {', '.join(DIMENSIONS)}", d.get("dimension"))
    seed = d.get("seed")
    if seed is not None and not isinstance(seed, str):
        raise _fail(where, "seed", "a string (LLM mode) or absent", seed)
    return RLPrompt(_text(d, "id", where, 200), _text(d, "prompt", where), _text(d, "category", where, 100),
                    d["dimension"], _rubric(d.get("rubric"), where), _text(d, "global_rule", where, 200), seed)


def load_rl_prompts(path: str | Path, check_heldout: bool = True) -> list[RLPrompt]:
    """Every record of an RL prompt file, checked: fields, unique ids and prompts, and (by default) the
    held-out rules, so a hand-edited file cannot bring a ShapesEval prompt into RL training."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"RL prompt file not found: {path}")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    records: list[RLPrompt] = []
    ids: dict[str, int] = {}
    texts: dict[str, int] = {}
    for number, line in enumerate(lines, 1):
        where = f"{path}:{number}"
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except ValueError as err:
            raise UserError(f"{where}: not valid JSON ({err.msg} at column {err.colno})") from None
        record = record_from_dict(data, where)
        if record.id in ids:
            raise _fail(where, "id", f"an id not used before (line {ids[record.id]} has it)", record.id)
        key = normalise_prompt(record.prompt)
        if key in texts:
            raise _fail(where, "prompt", f"a prompt not given before (line {texts[key]} has it)", record.prompt)
        if check_heldout and (problems := heldout_violations(record.prompt)):
            raise UserError(f"{where}: field 'prompt': {record.prompt!r} is held out for ShapesEval: "
                            + "; ".join(problems))
        ids[record.id], texts[key] = number, number
        records.append(record)
    if not records:
        raise UserError(f"{path}: no records (expected one JSON object per line)")
    return records


# --- writing --------------------------------------------------------------------------------------------

def counts(records: list[RLPrompt]) -> dict[str, Any]:
    """Records per category, per dimension, and per category and dimension."""
    cats = Counter(r.category for r in records)  # categories in the order they first appear
    dims = Counter(r.dimension for r in records)
    both: dict[str, Counter] = {c: Counter() for c in cats}
    for r in records:
        both[r.category][r.dimension] += 1
    return {"records": len(records), "per_category": dict(cats),
            "per_dimension": {k: dims[k] for k in DIMENSIONS if k in dims},
            "per_category_dimension": {c: {d: both[c][d] for d in DIMENSIONS if d in both[c]} for c in both}}


def jsonl(records: list[RLPrompt]) -> str:
    return "".join(json.dumps(r.to_dict(), ensure_ascii=False) + "\n" for r in records)


def summary_path(out: str | Path) -> Path:
    return Path(out).parent / "summary.json"


def write_rl_prompts(out: str | Path, records: list[RLPrompt], info: dict[str, Any]) -> dict[str, Any]:
    """OUT (JSONL) and summary.json beside it, each atomically; the summary is `info` plus the counts."""
    summary = {**info, "file": Path(out).name, "global_rule": GLOBAL_RULE, **counts(records)}
    atomic_write_text(out, jsonl(records))
    atomic_write_json(summary_path(out), summary)
    return summary
