"""tasu: text-only alignment of speech LLMs.

    from tasu import Speech2Text      # a trained model from Python (see tasu.api)
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    # imported on first use: ``import tasu`` (and the ``tasu validate`` command) stays free of torch
    if name in ("Speech2Text", "Hypothesis"):
        from tasu import api

        return getattr(api, name)
    raise AttributeError(f"module 'tasu' has no attribute {name!r}")
