"""Short GenEval-style prompts as structure: format them, parse them back.

One grammar serves the short training captions, ShapesEval's prompts and the RL prompts, so a prompt
string can always be turned into what scoring, rubrics and ground-truth rendering need:

    [a photo of | an image of | a picture of | ] BODY
    BODY := NP | NP and NP | NP, NP, ... and NP | NP REL NP
    NP   := (a|an|two|...|six) [COLOUR] SHAPE[s] | a sign that says "WORD" | ...
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

from lensgen.errors import UserError
from lensgen.shapes.vocab import (
    COLOUR_NAMES,
    NUMBER_WORDS,
    PLURALS,
    RELATIONS,
    SHAPES,
    WORD_NUMBERS,
    article,
    plural,
)

PREFIXES: tuple[str, ...] = ("a photo of ", "an image of ", "a picture of ", "")
SIGN_FORMS: tuple[str, ...] = ('a sign that says "{}"', 'a sign with the word "{}"', 'a sign reading "{}"')


@dataclass
class ObjectReq:
    shape: str
    colour: str | None = None  # None: any colour
    count: int = 1


@dataclass
class Relation:
    a: int  # index into objects
    relation: str  # one of RELATIONS: "objects[a] <relation> objects[b]"
    b: int


@dataclass
class PromptSpec:
    """What a prompt asks for. `exact_count` is GenEval's counting rule (no more than asked)."""

    objects: list[ObjectReq] = field(default_factory=list)
    relation: Relation | None = None
    text: str | None = None
    exact_count: bool = False
    task: str | None = None
    prompt: str = ""
    id: str = ""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> PromptSpec:
        rel = d.get("relation")
        return cls(
            objects=[ObjectReq(**o) for o in d.get("objects", [])],
            relation=Relation(**rel) if rel else None,
            text=d.get("text"),
            exact_count=bool(d.get("exact_count", False)),
            task=d.get("task"),
            prompt=d.get("prompt", ""),
            id=d.get("id", ""),
        )


def noun_phrase(obj: ObjectReq) -> str:
    words = ([obj.colour] if obj.colour else []) + [plural(obj.shape, obj.count)]
    head = article(words[0]) if obj.count == 1 else NUMBER_WORDS[obj.count]
    return " ".join([head, *words])


def format_prompt(spec: PromptSpec, prefix: int = 0, sign_form: int = 0) -> str:
    """The prompt string for `spec` using template indices (PREFIXES[prefix], SIGN_FORMS[sign_form])."""
    if spec.relation is not None:
        r = spec.relation
        body = f"{noun_phrase(spec.objects[r.a])} {r.relation} {noun_phrase(spec.objects[r.b])}"
        phrases = [body]
    else:
        phrases = [noun_phrase(o) for o in spec.objects]
    if spec.text:
        phrases.append(SIGN_FORMS[sign_form].format(spec.text))
    if not phrases:
        raise ValueError("a prompt needs at least one object or a sign")
    body = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    return PREFIXES[prefix] + body


_COUNT = "|".join(["a", "an", *WORD_NUMBERS])
_COLOUR = "|".join(COLOUR_NAMES)
_SHAPE = "|".join([*PLURALS.values(), *SHAPES])
_NP = re.compile(rf"^({_COUNT}) (?:({_COLOUR}) )?({_SHAPE})$")
_SIGN = re.compile(r"""a sign (?:that says|with the word|reading) "([A-Z]{1,12})"$""")
_REL = re.compile(rf"^(.+?) ({'|'.join(RELATIONS)}) (.+)$")


def _parse_np(text: str, prompt: str) -> ObjectReq:
    m = _NP.match(text)
    if not m:
        raise UserError(f"cannot read '{text}' in prompt '{prompt}': expected e.g. 'a red circle' or 'three stars'")
    count_word, colour, shape_word = m.groups()
    count = 1 if count_word in ("a", "an") else WORD_NUMBERS[count_word]
    shape = shape_word[:-1] if shape_word.endswith("s") and shape_word[:-1] in SHAPES else shape_word
    if (count == 1) != (shape_word == shape):
        raise UserError(f"count and noun disagree in '{text}' (prompt '{prompt}')")
    return ObjectReq(shape, colour, count)


def parse_prompt(prompt: str) -> PromptSpec:
    """Read a short Shapes prompt back into a PromptSpec (raises UserError for other wordings)."""
    text = prompt.strip().rstrip(".")
    low = text.lower()
    for prefix in PREFIXES[:-1]:
        if low.startswith(prefix):
            text = text[len(prefix):]
            break
    word = None
    sign = re.search(r"(?:,| and)? ?" + _SIGN.pattern, text)
    if sign:
        word = sign.group(1)
        text = text[: sign.start()].strip()
    text = text.lower()
    spec = PromptSpec(text=word, prompt=prompt)
    if not text:
        if word is None:
            raise UserError(f"prompt '{prompt}' names no object and no sign")
        return spec
    m = _REL.match(text)
    if m and _NP.match(m.group(1)) and _NP.match(m.group(3)):
        spec.objects = [_parse_np(m.group(1), prompt), _parse_np(m.group(3), prompt)]
        spec.relation = Relation(0, m.group(2), 1)
        return spec
    parts = [p.strip() for p in re.split(r",| and ", text) if p.strip()]
    spec.objects = [_parse_np(p, prompt) for p in parts]
    return spec
