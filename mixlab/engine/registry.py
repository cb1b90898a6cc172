"""Name -> implementation registries, one per config group.

A registry is a dict plus a decorator (the timm pattern). The registry key is also the
config file stem and the ``name:`` in that file (``conf/lambda/distance.yaml`` builds the
policy registered as ``distance``); ``tests/test_config.py`` holds the two sets equal.
``Registry.build`` rejects a misspelled option, and checks each option's type against the
constructor's annotation (``check_types``), so constructors only check ranges and choices.
"""
from __future__ import annotations

import collections.abc
import inspect
import sys
import types
import typing
from typing import Any, Callable, Generic, TypeVar

T = TypeVar("T")

# What each checked annotation allows, as the one-line error says it (singular, plural).
_WORDS = {float: ("a number", "numbers"), int: ("an integer", "integers"), bool: ("true or false", "booleans"),
          str: ("a string", "strings"), type(None): ("null", "nulls")}
_LISTS = (list, tuple, collections.abc.Sequence)  # YAML lists arrive as lists; callers may pass tuples


def is_number(value: Any) -> bool:
    """An int or a finite float, not a bool (the bound rejects NaN, inf and an int like 10**400, exactly)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) <= sys.float_info.max


def _fits(value: Any, hint: Any) -> bool | None:
    """Whether ``value`` has the annotated type; None for an annotation this check does not know."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        fits = [_fits(value, a) for a in args]
        return None if None in fits else any(fits)
    if hint in _LISTS or origin in _LISTS:
        return isinstance(value, (list, tuple)) and (not args or all(_fits(v, args[0]) is not False for v in value))
    if hint is float:
        return is_number(value)
    if hint is int:  # bool is an int subclass, but `width: true` is a mistake
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint) if hint in _WORDS else None


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if hint in _LISTS or origin in _LISTS:
        return f"a list of {_WORDS[args[0]][1]}" if args and args[0] in _WORDS else "a list"
    return _WORDS[hint][0]


def check_types(fn: Callable[..., Any], kwargs: dict[str, Any]) -> None:
    """Check each keyword argument against ``fn``'s annotation; unannotated or unknown types pass.

    ``float`` takes an int or a finite float, ``int`` an int, ``bool`` only a bool, ``X | None``
    also None, and ``list``/``tuple``/``Sequence[X]`` a list or tuple of X. Never a bool for a number.
    """
    try:
        hints = typing.get_type_hints(fn.__init__ if inspect.isclass(fn) else fn)
    except (NameError, TypeError):  # an annotation that does not evaluate: nothing to check against
        return
    for key, value in kwargs.items():
        if key in hints and _fits(value, hints[key]) is False:
            raise ValueError(f"{key}={value!r}: expected {_describe(hints[key])}")


class Registry(Generic[T]):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def decorator(fn: Callable[..., T]) -> Callable[..., T]:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered (by {self._entries[name]!r})")
            self._entries[name] = fn
            return fn

        return decorator

    def names(self) -> list[str]:
        return sorted(self._entries)

    def get(self, name: str) -> Callable[..., T]:
        try:
            return self._entries[name]
        except KeyError:
            raise ValueError(f"unknown {self.kind} {name!r}; expected one of {self.names()}") from None

    def check(self, name: str, **kwargs: Any) -> Callable[..., T]:
        """``name``'s builder, once its name, option names and option types are checked (no range checks,
        nothing built: a model's options can be checked before its data set's shape is known)."""
        fn = self.get(name)
        params = inspect.signature(fn).parameters
        if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            allowed = [k for k, p in params.items() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
            unknown = sorted(set(kwargs) - set(allowed))
            if unknown:
                raise ValueError(f"{self.kind} {name!r} got unknown option(s) {unknown}; allowed: {allowed}")
        check_types(fn, kwargs)
        return fn

    def build(self, name: str, **kwargs: Any) -> T:
        """Build ``name`` with keyword arguments; a misspelled or mistyped argument is an error that names it."""
        return self.check(name, **kwargs)(**kwargs)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"
