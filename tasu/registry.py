"""Classes chosen by name from a config: the one mechanism behind projectors and encoder backends.

    PROJECTORS = Registry("projector")

    @PROJECTORS.register("linear-silu")
    class LinearSiLU(Projector): ...

    PROJECTORS.lookup("linear-silu")  # the class; an unknown name lists the known ones

A registry is a dict of name -> class (tests may add and delete entries), filled as the modules
that hold the classes are imported.
"""
from __future__ import annotations

from typing import Callable, TypeVar

T = TypeVar("T", bound=type)


class Registry(dict):
    """Name -> class, for one kind of thing (``what``: how messages call it)."""

    def __init__(self, what: str):
        super().__init__()
        self.what = what

    def register(self, name: str) -> Callable[[T], T]:
        """Class decorator: make the class available as ``name``; a taken name is an error."""
        def add(cls: T) -> T:
            if name in self:
                raise ValueError(f"{self.what} name {name!r} is already taken by {self[name].__name__}")
            self[name] = cls
            return cls

        return add

    def lookup(self, name: str) -> type:
        """The class registered as ``name``; a ValueError naming the known ones otherwise."""
        if name not in self:
            raise ValueError(f"unknown {self.what} {name!r}; known {self.what}s: {', '.join(sorted(self))}")
        return self[name]
