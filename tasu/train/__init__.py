"""Training: the speech LLM's loop on DeepSpeed (``trainer``, with ``collate`` building each step's
batch and ``checkpoint`` writing and reading back its checkpoints), and the learned simulator's
training (``simulator``: ``tasu train-simulator``, a plain torch loop that shares the checkpoint steps).

Nothing outside training imports this package: decoding, the API and export read a trained model
through ``tasu.model_io`` alone (``test_layering``)."""
