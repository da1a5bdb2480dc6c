"""FFAvatar: few-shot, feed-forward 3D Gaussian head avatars."""

import os as _os

# OpenMP threads that spin while waiting stall badly when the cores are shared (2 torch threads
# took 1.4 s instead of 20 ms for a small render); passive waiting costs nothing when they are not.
# Effective when ffavatar is imported before torch starts its thread pool.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
