"""The validators and field metadata the built-in analyzers' config classes share."""

from __future__ import annotations

from gnorm.converter import naming


def intervals(instance, attribute, value: dict[str, list[float]]) -> None:
    """Validator: every value of a ``within`` table is a closed interval [low, high]."""
    for key, interval in value.items():
        if len(interval) != 2 or interval[0] > interval[1]:
            raise ValueError(f"{key!r} must be [low, high] with low <= high, found {interval}")


def at_least(low: int):
    """Validator: an integer option of at least ``low``."""
    def check(instance, attribute, value) -> None:
        if value < low:
            raise ValueError(f"'{attribute.name}' must be at least {low}, found {value}")
    return check


def resample_count(instance, attribute, value) -> None:
    """Validator: a number of bootstrap resamples from 1 to MAX_RESAMPLES."""
    if not 1 <= value <= MAX_RESAMPLES:
        raise ValueError(f"'{attribute.name}' must be from 1 to {MAX_RESAMPLES}, found {value}")


def confidence_level(instance, attribute, value) -> None:
    """Validator: a confidence level strictly between 0 and 1."""
    if not 0.0 < value < 1.0:
        raise ValueError(f"'{attribute.name}' must be a level between 0 and 1 (e.g. 0.95), found {value}")


def positive_number(instance, attribute, value) -> None:
    """Validator: a positive number, or None."""
    if value is not None and value <= 0:
        raise ValueError(f"'{attribute.name}' must be positive, found {value}")


def not_empty(instance, attribute, value) -> None:
    """Validator: a non-empty string or list."""
    if not value:
        raise ValueError(f"'{attribute.name}' must not be empty")


#: The bootstrap intervals of the delay-law fits (``interval``): whole seeds across all their cells and
#: their free run (Wc carried through), or seeds within each cell independently (the papers' bootstrap).
INTERVALS = ("seed_block", "cell")
#: How a table's CI column names each interval.
INTERVAL_NAMES = {"seed_block": "seed-block CI", "cell": "CI"}
#: The most bootstrap resamples an analyzer may draw.
MAX_RESAMPLES = 1_000_000
#: Field metadata: the option names stages of the file, or run keys (checked when the file is read).
STAGES = naming("stage")
KEYS = naming("key")
