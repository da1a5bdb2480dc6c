"""Fuzzy matching of shape-key and bone names (no bpy).

``"mouthSmile_L"``, ``"MouthSmileLeft"``, ``"mouth_smile.L"``, ``"CC_Base:bs_MouthSmile_Left"`` all
reduce to the same canonical key ``"mouthsmile|l"``: case, separators, namespaces, common
prefixes and left/right spellings are ignored.
"""

from __future__ import annotations

import re

_SIDES = {"l": "l", "left": "l", "r": "r", "right": "r"}
_PREFIXES = ("blendshape", "blendshapes", "bs", "arkit", "shape", "sk", "key", "expr", "expression")
_PREFIX_SEP = re.compile(r"^(?:arkit|blend_?shapes?\d*|bs|shape|sk)[_.\-]", re.IGNORECASE)
_WORDS = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|\d+")


def tokens(name: str) -> list[str]:
    """Lower-case words of a name: camelCase, separators and namespaces (``a:b``, ``a|b``) split."""
    name = re.split(r"[:|]", name)[-1]
    name = _PREFIX_SEP.sub("", name)
    return [w.lower() for w in _WORDS.findall(name)]


def canonical(name: str) -> str:
    """The comparison key of a name (see the module docstring)."""
    words = tokens(name)
    side = ""
    if len(words) > 1 and words[-1] in _SIDES:
        side = _SIDES[words.pop()]
    elif len(words) > 1 and words[0] in _SIDES:
        side = _SIDES[words.pop(0)]
    while len(words) > 1 and words[0] in _PREFIXES:
        words.pop(0)
    base = "".join(words)
    return f"{base}|{side}" if side else base


def match(wanted: str, available: list[str] | set[str] | tuple[str, ...]) -> str | None:
    """The name in ``available`` that ``wanted`` refers to: exact, then case-insensitive, then
    canonical; ``None`` when nothing matches or the canonical match is ambiguous."""
    available = list(available)
    if wanted in available:
        return wanted
    low = [a for a in available if a.lower() == wanted.lower()]
    if len(low) == 1:
        return low[0]
    key = canonical(wanted)
    hits = [a for a in available if canonical(a) == key]
    return hits[0] if len(hits) == 1 else None


def match_all(wanted: list[str], available: list[str]) -> dict[str, str]:
    """``{wanted name: available name}`` for every name that matches."""
    out = {}
    for w in wanted:
        hit = match(w, available)
        if hit is not None:
            out[w] = hit
    return out
