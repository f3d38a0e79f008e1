"""tasu: text-only alignment of speech LLMs."""

__version__ = "0.1.0"
