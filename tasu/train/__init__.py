"""The training engine: configs, collation, DeepSpeed loop, checkpoints."""
