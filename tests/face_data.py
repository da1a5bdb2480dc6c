"""Real faces for the tests: the cached kphotoalbum demo, scikit-image's astronaut, matplotlib's
Grace Hopper, and the synthetic cases copied from shared/cases (tests/data). Each skips with the
reason when it cannot be had here."""

from __future__ import annotations

from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parent / "data"
DRIVER_GAP = DATA / "driver_gap"          # 8 demo-head frames, frame 4 blank
DRIVER_STATIC = DATA / "driver_static.mp4"  # 48 demo-head frames, static camera


def landmarker_or_skip():
    """A shared FaceFinder on the landmarker, or skip (mediapipe / model package not installed)."""
    from ffavatar.face.landmarker import landmarker_unavailable, shared_finder

    reason = landmarker_unavailable()
    if reason:
        pytest.skip(f"face landmarker unavailable: {reason}")
    return shared_finder("landmarker")


def kphotoalbum_or_skip() -> Path:
    from ffavatar.face.samples import SampleUnavailable, kphotoalbum_demo

    try:
        return kphotoalbum_demo()
    except SampleUnavailable as e:
        pytest.skip(f"kphotoalbum demo photos unavailable: {e}")


def portrait_or_skip(which: str) -> Path:
    from ffavatar.face import samples

    try:
        return getattr(samples, which)()
    except samples.SampleUnavailable as e:
        pytest.skip(str(e))
