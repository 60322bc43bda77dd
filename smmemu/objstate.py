"""The Python side of a Machine's state, captured once and put back in place (decision 0011).

Devices, the chipset, the communicator and the MM services keep their state in
ordinary Python objects, and more of them appear as smmemu grows. Rather than
a hand-kept list of fields, :class:`ObjectState` walks the object graph from
its roots once, when the snapshot is taken:

* a *component* is an object the ``fields`` policy names attributes for
  (snapshot.py: instances of smmemu classes that are not frozen dataclasses,
  enums or excluded types); the objects its attributes hold are recorded;
* a *container* (list, dict, set, bytearray) has its contents copied, one
  level deep: nested containers and components are entries of their own;
* everything else is a value: numbers, strings, bytes, tuples, frozen
  dataclasses, enums, UUIDs, callables, objects of other packages.

Restoring puts back every container's contents in place, then every component
attribute that changed, so whoever shares a container or a component sees the
restore. Changes are found by equality, with CPython's identity shortcut: the
unchanged case is two comparisons done in C, whatever the number of entries.
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["Fields", "ObjectState"]

Fields = Callable[[object], tuple[str, ...] | None]
"""The attributes to capture of an object, or None when the object is a plain value."""

Container = list[Any] | dict[Any, Any] | set[Any] | bytearray


def _copy(container: Container) -> list[Any] | dict[Any, Any] | frozenset[Any] | bytes:
    if isinstance(container, bytearray):
        return bytes(container)
    if isinstance(container, set):
        return frozenset(container)
    return container.copy()


def _put_back(container: Container, saved: Any) -> None:  # noqa: ANN401 - the copy's type
    if isinstance(container, dict | set):
        container.clear()
        container.update(saved)
    else:
        container[:] = saved


class ObjectState:
    """The state of every component and container reachable from ``roots``.

    A component whose captured attributes are its whole ``__dict__`` is compared
    through a copy of that dict; any other through an ``attrgetter``.

    Args:
        roots: where the walk starts (each must be a component under ``fields``).
        fields: which attributes of an object to capture, or None for a value.
    """

    def __init__(self, roots: Iterable[object], fields: Fields) -> None:
        self._fields = fields
        seen: set[int] = set()
        self._dicts: list[dict[str, Any]] = []
        self._dicts_saved: list[dict[str, Any]] = []
        self._dict_owners: list[object] = []
        self._objects: list[object] = []
        self._names: list[tuple[str, ...]] = []
        self._getters: list[operator.attrgetter[Any]] = []
        self._values: list[tuple[Any, ...]] = []
        self._containers: list[Container] = []
        self._saved: list[object] = []
        pending = list(roots)
        while pending:
            pending += self._visit(pending.pop(), seen)

    def _visit(self, value: object, seen: set[int]) -> list[object]:
        """Record ``value`` if it is a component or a container; return what it refers to."""
        if isinstance(value, tuple | frozenset):
            return list(value)
        if id(value) in seen:
            return []
        if isinstance(value, list | dict | set | bytearray):
            seen.add(id(value))
            saved = _copy(value)
            self._containers.append(value)
            self._saved.append(saved)
            if isinstance(saved, dict):
                return [*saved.keys(), *saved.values()]
            return [] if isinstance(saved, bytes) else list(saved)
        names = self._fields(value)
        if not names:
            return []
        seen.add(id(value))
        names = tuple(name for name in names if hasattr(value, name))
        attributes = getattr(value, "__dict__", None)
        if isinstance(attributes, dict) and set(names) == set(attributes):
            self._dicts.append(attributes)
            self._dicts_saved.append(dict(attributes))
            self._dict_owners.append(value)
            return list(attributes.values())
        if not names:
            return []
        getter = operator.attrgetter(*names, names[0])  # always a tuple, even for one name
        values = getter(value)
        self._objects.append(value)
        self._names.append(names)
        self._getters.append(getter)
        self._values.append(values)
        return list(values)

    @property
    def size(self) -> tuple[int, int]:
        """(components, containers) captured."""
        return len(self._dicts) + len(self._objects), len(self._containers)

    def covers(self, obj: object, name: str) -> bool:
        """Whether attribute ``name`` of ``obj`` is part of the captured state."""
        for owner, saved in zip(self._dict_owners, self._dicts_saved, strict=True):
            if owner is obj:
                return name in saved
        return any(o is obj and name in n for o, n in zip(self._objects, self._names, strict=True))

    def restore(self) -> None:
        """Put every container's contents and every component's attributes back."""
        containers, saved = self._containers, self._saved
        if containers != saved:
            for index in _differing(containers, saved):
                _put_back(containers[index], saved[index])
        dicts, dicts_saved = self._dicts, self._dicts_saved
        if dicts != dicts_saved:
            for index in _differing(dicts, dicts_saved):
                values = dicts_saved[index]
                _put_attributes(self._dict_owners[index], values.keys(), values.values())
        current = [getter(obj) for getter, obj in zip(self._getters, self._objects, strict=True)]
        if current != self._values:
            for index in _differing(current, self._values):
                _put_attributes(self._objects[index], self._names[index], self._values[index])


def _differing(now: list[Any], then: list[Any]) -> Iterable[int]:
    """Indices where ``now`` and ``then`` differ, found in C."""
    return itertools.compress(range(len(now)), map(operator.ne, now, then))


def _put_attributes(obj: object, names: Iterable[str], values: Iterable[Any]) -> None:
    for name, value in zip(names, values, strict=False):
        if getattr(obj, name) is not value:
            setattr(obj, name, value)
