"""The scheme registry: one class per numerical scheme, looked up by name.

Adding a scheme is one class decorated with :func:`register_scheme`; the
architecture validator (:mod:`lmsearch.arch`) and the network builder read
everything they need from that class.
"""

from __future__ import annotations

from typing import TypeVar

__all__ = ["register_scheme", "get_scheme", "scheme_names"]

T = TypeVar("T")


_SCHEMES: dict[str, type] = {}


def register_scheme(cls: type[T]) -> type[T]:
    """Class decorator: make ``cls`` available under ``cls.name``.

    The class sets ``name`` (str) and ``functions_per_step`` (int): how many
    distinct residual functions one step uses (euler 1, rk2 2, rk4 4, rev 2).
    """
    name = getattr(cls, "name", None)
    fps = getattr(cls, "functions_per_step", None)
    if not isinstance(name, str) or not isinstance(fps, int) or fps < 1:
        raise TypeError(f"{cls.__name__} needs a str `name` and an int `functions_per_step` >= 1")
    if name in _SCHEMES and _SCHEMES[name] is not cls:
        raise ValueError(f"scheme {name!r} is already registered by {_SCHEMES[name].__name__}")
    _SCHEMES[name] = cls
    return cls


def _load_builtin() -> None:
    # Importing the module registers the built-in schemes.
    from lmsearch.nn import schemes  # noqa: F401


def get_scheme(name: str) -> type:
    """The registered scheme class called ``name`` (ValueError listing the known ones)."""
    _load_builtin()
    try:
        return _SCHEMES[name]
    except KeyError:
        raise ValueError(f"scheme must be one of {', '.join(scheme_names())}; got {name!r}") from None


def scheme_names() -> tuple[str, ...]:
    """Names of all registered schemes, in registration order."""
    _load_builtin()
    return tuple(_SCHEMES)

