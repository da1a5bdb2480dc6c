"""Datasets: the generic folder format, the synthetic generator, adapters (video, NeRSemble, Ava256),
WebDataset-style shards, and the few-to-many sampler. ``sources.open_source(spec)`` opens any of them."""
