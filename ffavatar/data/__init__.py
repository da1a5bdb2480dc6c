"""Datasets: the generic folder format, the synthetic generator, and (later) video/NeRSemble/Ava256."""
