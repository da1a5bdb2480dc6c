"""Shared fixtures (the data they build lives in ffavatar_testdata.py)."""

from __future__ import annotations

import numpy as np
import pytest

from ffavatar_testdata import make_tiny_flame


@pytest.fixture
def tiny_flame() -> dict:
    return make_tiny_flame()


@pytest.fixture
def tiny_flame_file(tmp_path) -> str:
    path = tmp_path / "tiny_flame.npz"
    np.savez(path, **make_tiny_flame())
    return str(path)
