"""A saved record against the one a command would write now: which settings
differ. The train workdir's ``config.json``, preprocessing's ``job.json`` and an
evaluation folder's ``manifest.json`` are each checked this way before a
resumed or extended run may add to what is there. JSON only, no JAX or torch.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any


class _Absent:
    def __repr__(self) -> str:
        return "(absent)"


ABSENT = _Absent()  # what a key one record lacks reads as, where that alone is a change (see ``changes``)


def changes(saved: Any, new: Any, *, absent: Any = None, saved_keys_only: bool = False) -> dict[str, tuple[Any, Any]]:
    """``{dotted key: (saved value, new value)}`` where two records differ, down to
    the first values that are not both mappings; both are compared as JSON reads
    them back (tuples as lists). A key that one record lacks reads as ``absent``:
    None by default, so that a setting added since and left unset is no change;
    with ``ABSENT`` the records differ exactly where they are not equal.
    ``saved_keys_only``: only the keys the saved record has."""

    def walk(old: Any, now: Any, prefix: str) -> dict[str, tuple[Any, Any]]:
        if not (isinstance(old, Mapping) and isinstance(now, Mapping)):
            return {} if old == now else {prefix[:-1]: (old, now)}
        keys = old.keys() if saved_keys_only else old.keys() | now.keys()
        found: dict[str, tuple[Any, Any]] = {}
        for key in sorted(keys):
            found |= walk(old.get(key, absent), now.get(key, absent), f"{prefix}{key}.")
        return found

    return walk(_as_stored(saved), _as_stored(new), "")


def flatten(record: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Leaves by dotted key (``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; an empty mapping has none):
    a config compared leaf by leaf, where a key added since may be given its old value by name."""
    if isinstance(record, Mapping):
        return {k: v for key, value in record.items() for k, v in flatten(value, f"{prefix}{key}.").items()}
    return {prefix[:-1]: record}


def describe(found: Mapping[str, tuple[Any, Any]]) -> str:
    """``key: old -> new; ...``, as errors and warnings list changes."""
    return "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in found.items())


def _as_stored(value: Any) -> Any:
    return json.loads(json.dumps(value))
