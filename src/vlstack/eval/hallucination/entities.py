"""Entities in a response: a lexicon of objects, attributes and places (any language, synonyms,
English plurals derived) and the clause parser that reads claimed noun phrases.

A lexicon is data (`lexicon.json` beside a hallucination suite): the evaluation's vocabulary, as
CHAIR's synonym list is COCO's. The words that shape a clause (boundaries, negations, copulas,
fillers, generic nouns) are English and Chinese grammar and live here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from vlstack.errors import ConfigError, DataError
from vlstack.files import write_json

LEXICON_FILE = "lexicon.json"
GENERIC_NOUNS = ["shape", "object", "figure", "one", "thing", "item", "形状", "图形", "物体"]
"""Nouns that name no object: "the red one", "the shape on the left is red" still carry an attribute."""

_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_TOKEN = re.compile(rf"[{_CJK}]|[a-z0-9]+(?:['’][a-z]+)?|\S", re.IGNORECASE)
"""A Chinese character, an English word (with its "n't"), or one other visible character."""
BOUNDARIES = frozenset(".,;:!?。，；：！？、") | {"and", "but", "or", "while", "whereas", "和", "与", "及", "或", "而", "但"}
"""Clause ends: an attribute never crosses one, and a negation's scope stops at one."""
NEGATIONS = frozenset({"no", "not", "without", "never", "none", "neither", "nor", "cannot", "没", "无", "不", "非", "未"})
COPULAS = frozenset({"is", "are", "was", "were", "be", "looks", "look", "appears", "appear", "seems", "是", "为"})
FILLERS = frozenset({"a", "an", "the", "-", "colored", "coloured", "shaped", "的", "个", "只"})
"""Words that may stand between attributes and their noun without ending the phrase."""

Kind = Literal["object", "attribute", "place", "generic"]


class Lexicon:
    """Surface forms (any language, plurals included) -> (kind, canonical name).

    Each group is a list whose first entry is the canonical name, as in chair.py's
    synonyms.txt; English plurals of every single word are added. A text is matched
    longest form first, so "正方形" is a square before "方" could be anything else.
    `place_phrases` says each place in the English grammar of the pretraining captions
    ("left" -> "on the left"); the detector renders entities with it. The generic nouns
    default to `GENERIC_NOUNS`.
    """

    def __init__(self, groups: Mapping[Kind, Sequence[Sequence[str]]], place_phrases: Mapping[str, str] | None = None):
        groups = {**groups, "generic": groups.get("generic") or [GENERIC_NOUNS]}
        self.groups = {kind: [list(group) for group in kind_groups] for kind, kind_groups in groups.items()}
        self.place_phrases = dict(place_phrases or {})
        self.names: dict[str, list[str]] = {kind: [g[0] for g in groups.get(kind, [])] for kind in
                                            ("object", "attribute", "place", "generic")}
        self.forms: dict[tuple[str, ...], tuple[Kind, str]] = {}
        for kind, kind_groups in groups.items():
            for group in kind_groups:
                if not group:
                    raise ConfigError(f"an empty {kind} group in the lexicon; a group is [canonical name, synonyms...]")
                for surface in group:
                    for variant in {surface, *_plurals(surface)}:
                        self.forms[tuple(t.lower() for t in _TOKEN.findall(variant))] = (kind, group[0])
        self.longest = max(len(form) for form in self.forms)

    def to_dict(self) -> dict:
        return {"groups": self.groups, "place_phrases": self.place_phrases}

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        write_json(path, self.to_dict())
        return path

    @classmethod
    def load(cls, path: str | Path) -> Lexicon:
        """A lexicon written by `save`: {"groups": {kind: [[canonical, synonym, ...], ...]}, "place_phrases": {...}}."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            groups, phrases = data["groups"], data.get("place_phrases", {})
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as error:
            raise DataError(f"{path} is not a lexicon file ({type(error).__name__}: {error}); it holds "
                            '{"groups": {"object": [[name, synonym, ...], ...], "attribute": ..., "place": ...}}') from None
        unknown = sorted(set(groups) - {"object", "attribute", "place", "generic"})
        if unknown:
            raise DataError(f"{path}: unknown group kinds {unknown}; valid: object, attribute, place, generic")
        return cls(groups, phrases)


def _plurals(surface: str) -> list[str]:
    """English plural of a single ASCII word ("circle" -> "circles", "box" -> "boxes"); none for others."""
    if not surface.isascii() or not surface.isalpha() or " " in surface:
        return []
    if surface.endswith(("s", "x", "z", "ch", "sh")):
        return [surface + "es"]
    if surface.endswith("y") and surface[-2:-1] not in "aeiou":
        return [surface[:-1] + "ies"]
    return [surface + "s"]


# --- Entity extraction --------------------------------------------------------------------------------

@dataclass
class Entity:
    """A noun phrase of a response, in canonical names."""

    text: str
    """The span of the response, as written."""
    object: str | None
    """The canonical object ("circle"); None for a generic noun or a bare predicate ("it is red")."""
    attributes: tuple[str, ...]
    place: str | None = None
    """Where the response puts it (left, right, center), when its clause says."""
    negated: bool = False
    """A negation before it in its clause: the response says it is not there."""
    start: int = 0
    end: int = 0

    @property
    def phrase(self) -> str:
        """Canonical English: attributes then the object ("red circle"; "red shape" without one)."""
        return " ".join([*self.attributes, self.object or "shape"])


@dataclass
class _Token:
    text: str
    kind: str
    """object | attribute | place | generic (lexicon), boundary | negation | copula | filler | word."""
    name: str
    start: int
    end: int


def extract_entities(text: str, lexicon: Lexicon) -> list[Entity]:
    """The object and attribute noun phrases of `text`, in order, negated ones included (flagged)."""
    entities: list[Entity] = []
    clause: list[_Token] = []
    for token in [*_tokens(text, lexicon), None]:
        if token is None or token.kind == "boundary":
            entities += _parse_clause(clause, text)
            clause = []
        else:
            clause.append(token)
    return entities


def _tokens(text: str, lexicon: Lexicon) -> list[_Token]:
    """Words and characters, with the longest lexicon form at each position merged into one token."""
    raw = list(_TOKEN.finditer(text))
    words = [m.group().lower() for m in raw]
    tokens, i = [], 0
    while i < len(raw):
        for n in range(min(lexicon.longest, len(raw) - i), 0, -1):
            hit = lexicon.forms.get(tuple(words[i : i + n]))
            if hit:
                kind, name = hit
                break
        else:
            n, kind, name = 1, _word_kind(words[i]), words[i]
        start, end = raw[i].start(), raw[i + n - 1].end()
        tokens.append(_Token(text[start:end], kind, name, start, end))
        i += n
    return tokens


def _word_kind(word: str) -> str:
    """The role of a word the lexicon does not know."""
    if word in BOUNDARIES:
        return "boundary"
    if word in NEGATIONS or word.endswith(("n't", "n’t")):
        return "negation"
    if word in COPULAS:
        return "copula"
    return "filler" if word in FILLERS else "word"


def _parse_clause(tokens: list[_Token], text: str) -> list[Entity]:
    """Entities of one clause: attributes attach to the next noun, or after a copula to the previous one."""
    entities: list[Entity] = []
    pending: list[_Token] = []  # attributes waiting for their noun
    negated = negated_since_last = copula = False
    waiting_place: str | None = None  # a place said before its entity ("左边是一个红色的圆形")
    for token in tokens:
        if token.kind == "negation":
            negated = negated_since_last = True
        elif token.kind == "attribute":
            pending.append(token)
        elif token.kind in ("object", "generic"):
            start = pending[0].start if pending else token.start
            entities.append(Entity(text[start:token.end], token.name if token.kind == "object" else None,
                                   tuple(p.name for p in pending), waiting_place, negated, start, token.end))
            pending, waiting_place, negated_since_last, copula = [], None, False, False
        elif token.kind == "place":
            if entities and entities[-1].place is None:
                entities[-1].place = token.name
            else:
                waiting_place = token.name
        elif token.kind == "copula":
            copula, pending = True, []
        elif token.kind == "word":
            pending = []  # the attributes describe a noun the lexicon does not know ("a white background")
    if pending and copula:  # a predicate: "the circle is red", "圆形是红色的", "it is red"
        names = tuple(p.name for p in pending)
        if entities and not negated_since_last:
            last = entities[-1]
            last.attributes += names
            last.end = pending[-1].end
            last.text = text[last.start : last.end]
        elif not entities:
            start = pending[0].start
            entities.append(Entity(text[start : pending[-1].end], None, names, waiting_place, negated, start,
                                   pending[-1].end))
    return [e for e in entities if e.object or e.attributes]


def render(entities: Sequence[Entity], lexicon: Lexicon) -> str:
    """Entities in the caption grammar of pretraining ("a red circle on the left and a ...")."""
    return " and ".join(f"a {e.phrase}" + (f" {lexicon.place_phrases[e.place]}" if e.place in lexicon.place_phrases
                                           else "") for e in entities)
