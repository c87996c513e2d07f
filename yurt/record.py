"""A slotted plain-data base class for the ``yurt exec`` hot path.

``dataclasses`` imports ``inspect`` (and with it ``ast``, ``dis``, ``re``,
``tokenize``): about 15 ms, more than the whole namespace set-up.  Records on
the exec path (the ContainerSpec, flags, requests, images) use this instead:
fields are ``__slots__``, defaults live in ``_defaults`` (a callable default is
a factory, e.g. ``list``), construction is by position or keyword, equality and
repr compare fields.
"""

from __future__ import annotations


class Record:
    __slots__: tuple[str, ...] = ()
    _defaults: dict[str, object] = {}

    def __init__(self, *args: object, **kwargs: object) -> None:
        names = self.__slots__
        if len(args) > len(names):
            raise TypeError(f"{type(self).__name__} takes at most {len(names)} positional arguments")
        values = dict(zip(names, args, strict=False))  # fewer args than fields is fine
        for key, value in kwargs.items():
            if key not in names or key in values:
                raise TypeError(f"{type(self).__name__}: unexpected or repeated argument {key!r}")
            values[key] = value
        for name in names:
            if name in values:
                setattr(self, name, values[name])
            elif name in self._defaults:
                default = self._defaults[name]
                setattr(self, name, default() if callable(default) else default)
            else:
                raise TypeError(f"{type(self).__name__}: missing argument {name!r}")

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return all(getattr(self, n) == getattr(other, n) for n in self.__slots__)

    __hash__ = None  # type: ignore[assignment]  # mutable, like a non-frozen dataclass

    def __repr__(self) -> str:
        inner = ", ".join(f"{n}={getattr(self, n)!r}" for n in self.__slots__)
        return f"{type(self).__name__}({inner})"
