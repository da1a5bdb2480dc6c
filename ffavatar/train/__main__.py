"""``python -m ffavatar.train --config C [--resume] [--set k=v ...]`` (also under torchrun)."""

from __future__ import annotations

import sys

from ..cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
