"""Frame order of image sequences as users name them (pure Python: no numpy, no cv2).

``frame_1, frame_2, ..., frame_10`` play in number order, not in text order (``frame_1, frame_10,
frame_11, frame_2``). This one rule orders every image folder: the CLI and library
(``ffavatar.images.list_images``) and the Blender add-on, which bundles this file
(``blender_addon/tools/build_extension.py`` copies it into the extension, like the backend client).
"""

from __future__ import annotations

import re

_DIGITS = re.compile(r"(\d+)")


def natural_key(name: str) -> tuple:
    """Sort key of a file name: runs of digits compare as numbers, the rest case-insensitively
    (ties broken by the exact text, so the order is total). ``sorted(names, key=natural_key)``
    puts ``frame_2`` before ``frame_10`` and ``a9.png`` before ``A10.png``."""
    parts = _DIGITS.split(name)   # text, digits, text, digits, ..., text
    return tuple(int(p) if i % 2 else p.casefold() for i, p in enumerate(parts)), name


def natural_sorted(names) -> list:
    """``names`` (strings or paths: their final component is compared) in natural order."""
    return sorted(names, key=lambda n: natural_key(getattr(n, "name", None) or str(n)))
