"""Training: losses, the few-to-many trainer (stages as TOML configs), torchrun DDP."""
