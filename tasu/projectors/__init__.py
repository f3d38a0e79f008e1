"""Projectors: posteriors -> LLM input embeddings, chosen by name (see ``base`` for the interface).

Importing this package registers every projector family below; ``build_projector(name, ...)``
builds one. To add a projector, write a ``Projector`` subclass with ``@register("its-name")`` in a
module of this package and import that module here. Its constructor's keyword options are what
``projector.options`` may set, checked against their annotations before anything loads (``bool``:
true or false; ``int``: a size or a count, at least 1, or 0 where 0 is its default; ``float``: a
number; ``| None``: null too; a constructor taking ``**kwargs`` checks the names it gets itself), and
by its ``check_options`` for values that must fit together (the qformer's ``dim`` and ``num_heads``).
"""
from tasu.projectors.base import DEFAULT_PROJECTOR, PROJECTORS, Projector, build_projector, register
# Each import registers its projector family.
from tasu.projectors import concat_mlp, conv1d, cross_attention, legoslm, linear_silu, qformer  # noqa: F401,E402

__all__ = ["DEFAULT_PROJECTOR", "PROJECTORS", "Projector", "build_projector", "register"]
