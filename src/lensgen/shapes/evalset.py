"""ShapesEval's held-out prompt files: built once from a fixed seed, committed, never used for training.

GenEval's six tasks plus text. `python -m lensgen.shapes.evalset --check` rebuilds the files in
memory and verifies the committed ones match (`--write` rewrites them: only for a new version).
position, color_attr and text prompts come only from held-out keys (heldout.py), so the training
generator can never produce their scenes.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np

from lensgen.errors import UserError
from lensgen.io import atomic_write_text
from lensgen.shapes import heldout
from lensgen.shapes.prompt import PREFIXES, SIGN_FORMS, ObjectReq, PromptSpec, Relation, format_prompt
from lensgen.shapes.vocab import COLOUR_NAMES, SHAPES

TASKS: tuple[str, ...] = ("single_object", "two_object", "counting", "colors", "position", "color_attr", "text")
GENEVAL_TASKS = TASKS[:6]
VERSION = "v1"
SEED = 20260101
PROMPT_DIR = Path(__file__).parent / "prompts"


def prompt_path(task: str, version: str = VERSION) -> Path:
    return PROMPT_DIR / f"shapes-{version}-{task}.jsonl"


def _specs(task: str, rng: np.random.Generator) -> list[PromptSpec]:
    if task == "single_object":
        return [PromptSpec([ObjectReq(s)]) for s in SHAPES for _ in range(2)]
    if task == "two_object":
        pairs = [list(p) for p in itertools.combinations(SHAPES, 2)]
        return [PromptSpec([ObjectReq(a), ObjectReq(b)]) for a, b in (rng.permutation(p) for p in pairs)]
    if task == "counting":
        return [PromptSpec([ObjectReq(s, None, n)], exact_count=True) for s in SHAPES for n in (2, 3, 4)]
    if task == "colors":
        combos = [(s, c) for s in SHAPES for c in COLOUR_NAMES]
        pick = rng.choice(len(combos), 30, replace=False)
        return [PromptSpec([ObjectReq(combos[i][0], combos[i][1])]) for i in sorted(pick)]
    if task == "position":
        # each held-out triple stated both ways round: "A left of B" and "B right of A"
        flip = {"left of": "right of", "above": "below"}
        both = [t for a, rel, b in heldout.heldout_positions() for t in ((a, rel, b), (b, flip[rel], a))]
        picks = sorted(rng.choice(len(both), min(24, len(both)), replace=False))
        return [PromptSpec([ObjectReq(both[i][0]), ObjectReq(both[i][2])], Relation(0, both[i][1], 1)) for i in picks]
    if task == "color_attr":
        pairs = heldout.heldout_pairs()
        specs = []
        for i in rng.choice(len(pairs), 30, replace=False):
            (ca, sa), (cb, sb) = pairs[i] if rng.random() < 0.5 else pairs[i][::-1]
            specs.append(PromptSpec([ObjectReq(sa, ca), ObjectReq(sb, cb)]))
        return specs
    if task == "text":
        words = list(heldout.HELDOUT_WORDS)
        return [PromptSpec(text=str(w)) for w in rng.choice(words, min(20, len(words)), replace=False)]
    raise ValueError(f"unknown task '{task}'")


def build_prompts(seed: int = SEED) -> list[PromptSpec]:
    """Every task's prompts with ids, texts and structure; prompt texts are unique across tasks."""
    rng = np.random.default_rng(seed)
    out, seen = [], set()
    for task in TASKS:
        for i, spec in enumerate(_specs(task, rng)):
            spec.task, spec.id = task, f"{task}-{i:03d}"
            while True:
                spec.prompt = format_prompt(spec, int(rng.integers(len(PREFIXES))), int(rng.integers(len(SIGN_FORMS))))
                if spec.prompt not in seen:
                    break
            seen.add(spec.prompt)
            out.append(spec)
    return out


def _jsonl(specs: list[PromptSpec]) -> str:
    return "".join(json.dumps(s.to_dict(), ensure_ascii=False) + "\n" for s in specs)


def write_prompt_files(version: str = VERSION, seed: int = SEED) -> list[Path]:
    specs = build_prompts(seed)
    paths = []
    for task in TASKS:
        path = prompt_path(task, version)
        atomic_write_text(path, _jsonl([s for s in specs if s.task == task]))
        paths.append(path)
    return paths


def load_prompts(tasks: list[str] | None = None, version: str = VERSION, limit: int | None = None
                 ) -> list[PromptSpec]:
    """The committed prompts of `tasks` (all by default), at most `limit` per task."""
    tasks = list(tasks or TASKS)
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise UserError(f"unknown ShapesEval task(s) {unknown}: choose from {', '.join(TASKS)}")
    specs = []
    for task in tasks:
        path = prompt_path(task, version)
        if not path.exists():
            raise UserError(f"no prompt file {path} for task '{task}' version '{version}'")
        lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
        specs += [PromptSpec.from_dict(json.loads(ln)) for ln in lines[:limit]]
    return specs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--write", action="store_true", help="rewrite the prompt files of this version")
    p.add_argument("--check", action="store_true", help="verify the committed files match a rebuild")
    args = p.parse_args(argv)
    if args.write:
        for path in write_prompt_files():
            print(path)
    if args.check or not args.write:
        specs = build_prompts()
        bad = [t for t in TASKS if prompt_path(t).read_text() != _jsonl([s for s in specs if s.task == t])]
        print("prompt files match the seeded build" if not bad else f"mismatch: {bad}")
        return 1 if bad else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
