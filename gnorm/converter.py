"""The strict converter: TOML data structured into attrs classes, with no silent 1.7 -> 1,
"no" -> True or 3 -> "3", unknown keys forbidden, and every failure flattened to (dotted path,
message, valid keys) so the loader can report each under its key. Also the ``naming`` metadata by which
a component's config class declares that an option names a stage or run keys."""

from __future__ import annotations

import collections.abc
import difflib
import math
import re
import typing
from typing import Any, Iterable

import attrs
import cattrs
import cattrs.cols
from cattrs.errors import ClassValidationError, ForbiddenExtraKeysError, IterableValidationError

from gnorm.describe import describe, short
from gnorm.runmodel import INT64_MAX, INT64_MIN, MAX_SEED, MAX_SEEDS

#: A problem as structuring reports it: (path of keys, message, valid keys to suggest from).
Found = tuple[tuple[str, ...], str, list[str]]


def out_of_int64(value: Any) -> bool:
    """Is ``value`` an integer (not a boolean) that a signed 64-bit integer cannot hold?"""
    return isinstance(value, int) and not isinstance(value, bool) and not INT64_MIN <= value <= INT64_MAX


def _finite_float(value: int | float) -> float:
    """float(value), refused (TypeError) where it is not a finite number: nan, inf, or an integer beyond
    the float range."""
    try:
        number = float(value)
    except OverflowError:
        raise TypeError(f"expected a number, found an integer too large for a float ({short(value)})") from None
    if not math.isfinite(number):
        raise TypeError(f"expected a number, found {value} (not finite)")
    return number


def _strict(expected: str, accept: tuple[type, ...], cast=lambda value: value):
    def hook(value: Any, _type: Any) -> Any:
        if isinstance(value, bool) and bool not in accept or not isinstance(value, accept):
            raise TypeError(f"expected {expected}, found {describe(value)}")
        if isinstance(value, float) and not math.isfinite(value):
            raise TypeError(f"expected {expected}, found {value} (not finite)")
        if out_of_int64(value) and int in accept and float not in accept:
            raise TypeError(f"expected {expected} between -2^63 and 2^63 - 1 (what the results store holds), "
                            f"found {short(value)}")
        return cast(value)
    return hook


_ARRAY_ORIGINS = (list, tuple, set, frozenset, collections.abc.Sequence, collections.abc.MutableSequence,
                  collections.abc.Set, collections.abc.MutableSet)


def _is_array_type(type_: Any) -> bool:
    """list[...], tuple[...], Sequence[...], set[...] and the like (never str): what a TOML array holds."""
    return type_ in _ARRAY_ORIGINS or typing.get_origin(type_) in _ARRAY_ORIGINS


def _strict_array_factory(converter: cattrs.Converter):
    """Structure hooks for array types that accept only a TOML array (a list), so that a string is never
    read as its characters nor a table as its keys."""
    def factory(type_: Any):
        origin = typing.get_origin(type_) or type_
        args = typing.get_args(type_)
        if origin is tuple and args and args[-1] is not Ellipsis:  # tuple[int, str]: fixed length
            def fixed(value: Any, _type: Any) -> tuple:
                if not isinstance(value, list) or len(value) != len(args):
                    raise TypeError(f"expected a list of {len(args)} values, found {describe(value)}")
                return tuple(converter.structure(v, t) for v, t in zip(value, args))
            return fixed
        if origin in (set, frozenset, collections.abc.Set, collections.abc.MutableSet):
            element = args[0] if args else Any
            def as_set(value: Any, _type: Any):
                if not isinstance(value, list):
                    raise TypeError(f"expected a list, found {describe(value)}")
                return (frozenset if origin is frozenset else set)(converter.structure(v, element) for v in value)
            return as_set
        inner = (cattrs.cols.homogenous_tuple_structure_factory if origin is tuple
                 else cattrs.cols.list_structure_factory)(type_, converter)

        def array(value: Any, _type: Any):
            if not isinstance(value, list):
                raise TypeError(f"expected a list, found {describe(value)}")
            return inner(value, _type)
        return array
    return factory


def _strict_table_factory(converter: cattrs.Converter):
    """Structure hooks for mapping types that accept only a TOML table (a dict)."""
    def factory(type_: Any):
        inner = cattrs.cols.mapping_structure_factory(type_, converter)

        def table(value: Any, _type: Any):
            if not isinstance(value, dict):
                raise TypeError(f"expected a table, found {describe(value)}")
            return inner(value, _type)
        return table
    return factory


def make_converter() -> cattrs.Converter:
    strict = cattrs.Converter(forbid_extra_keys=True)
    strict.register_structure_hook(int, _strict("an integer", (int,)))
    strict.register_structure_hook(float, _strict("a number", (int, float), _finite_float))
    strict.register_structure_hook(bool, _strict("true or false", (bool,)))
    strict.register_structure_hook(str, _strict("a string", (str,)))
    strict.register_structure_hook_factory(_is_array_type, _strict_array_factory(strict))
    strict.register_structure_hook_factory(cattrs.cols.is_mapping, _strict_table_factory(strict))

    def seeds_hook(value: Any, _type: Any) -> int | list[int]:
        if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_SEEDS:
            return value
        if isinstance(value, int) and not isinstance(value, bool) and value > MAX_SEEDS:
            raise TypeError(f"expected a count of at most {MAX_SEEDS} seeds, found {short(value)}")
        if isinstance(value, list) and value and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            bad = next((v for v in value if not 0 <= v <= MAX_SEED), None)
            if bad is not None:
                raise TypeError(f"a seed is an integer from 0 to 2^63 - 1, found {short(bad)}")
            if len(value) > MAX_SEEDS:
                raise TypeError(f"expected at most {MAX_SEEDS} seeds, found {len(value)}")
            if len(set(value)) == len(value):
                return value
            raise TypeError(f"seed {next(v for v in value if value.count(v) > 1)} is listed twice")
        raise TypeError(f"expected a positive count or a list of distinct integer seeds, found {describe(value)}")

    strict.register_structure_hook(int | list[int], seeds_hook)
    return strict


converter = make_converter()


def _flatten_errors(error: BaseException, path: tuple[str, ...]) -> Iterable[Found]:
    """(path, message, valid keys for suggestions) for every leaf of a cattrs error tree."""
    if isinstance(error, ClassValidationError):
        with_notes, without_notes = error.group_exceptions()
        for sub, note in with_notes:
            if isinstance(sub, KeyError):  # the note already names the missing attribute
                yield path + (note.name,), "required key is missing", []
            else:
                yield from _flatten_errors(sub, path + (note.name,))
        for sub in without_notes:
            yield from _flatten_errors(sub, path)
    elif isinstance(error, IterableValidationError):
        with_notes, without_notes = error.group_exceptions()
        for sub, note in with_notes:
            yield from _flatten_errors(sub, path[:-1] + (f"{path[-1]}[{note.index}]",) if path else path)
        for sub in without_notes:
            yield from _flatten_errors(sub, path)
    elif isinstance(error, ForbiddenExtraKeysError):
        valid = [field.name for field in attrs.fields(error.cl)]
        for extra in sorted(error.extra_fields):
            yield path + (extra,), "unknown key", valid
    elif isinstance(error, KeyError):
        yield path + (str(error.args[0]),), "required key is missing", []
    else:
        message = str(error)
        if "required positional argument" in message or "missing" in message and "argument" in message:
            name = message.rsplit("'", 2)[-2] if "'" in message else ""
            yield path + ((name,) if name else ()), "required key is missing", []
        else:
            yield path, message, []


def _validator_problems(instance: Any, path: tuple[str, ...]) -> Iterable[Found]:
    """Run each field's attrs validator on its own, so that every failure is reported under its key."""
    for field in attrs.fields(type(instance)):
        value = getattr(instance, field.name)
        if field.validator is not None:
            try:
                field.validator(instance, field, value)
            except Exception as error:
                if len(error.args) >= 4 and isinstance(error.args[1], attrs.Attribute):  # attrs.validators.in_
                    message = f"expected one of {', '.join(map(repr, error.args[2]))}, found {error.args[3]!r}"
                else:
                    message = str(error)
                yield path + (field.name,), message, []
        if attrs.has(type(value)):
            yield from _validator_problems(value, path + (field.name,))


def structure(raw: Any, cls: type) -> tuple[Any, list[Found]]:
    """Structure ``raw`` into ``cls``; return (object or None, problems as (path, message, valid keys))."""
    if not isinstance(raw, dict):
        return None, [((), f"expected a table, found {describe(raw)}", [])]
    try:
        with attrs.validators.disabled():  # run below, field by field, so each failure names its key
            instance = converter.structure(raw, cls)
    except Exception as error:  # collected and reported, never raised past the loader
        return None, list(_flatten_errors(error, ()))
    problems = list(_validator_problems(instance, ()))
    return (None if problems else instance), problems


def without_index(key: str) -> str:
    """``sweep."task.p"[2]`` -> ``sweep."task.p"``."""
    return re.sub(r"\[\d+\]$", "", key)


def suggest(name: str, valid: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the valid name closest to ``name``; empty when none is close."""
    close = difflib.get_close_matches(name, list(valid), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


#: attrs field metadata key by which a component's config class declares what an option names: a
#: stage of the file (``naming("stage")``) or run keys (``naming("key")``: a dotted config key,
#: ``facts.<name>`` or ``held_norm``; for a table, its keys). The loader checks what the file wrote.
NAMES = "gnorm.names"
#: Run keys that are not config keys: what analyzers read besides a run's configuration.
DERIVED_KEYS = ("held_norm",)


def naming(what: str) -> dict[str, str]:
    """Field metadata declaring that an option names a ``stage`` of the file or run ``key``s."""
    return {NAMES: what}


def names_written(value: Any) -> list[tuple[str, Any]]:
    """(suffix of the dotted key, name) for each name an option holds: a string, a list or a table's keys."""
    if isinstance(value, str):
        return [("", value)] if value else []
    if isinstance(value, dict):
        return [(f".{name}" if re.fullmatch(r"[A-Za-z0-9_-]+", name) else f'."{name}"', name) for name in value]
    if isinstance(value, (list, tuple)):
        return [(f"[{i}]", name) for i, name in enumerate(value)]
    return []
