"""FFAvatar: few-shot, feed-forward 3D Gaussian head avatars."""

__version__ = "0.1.0"
