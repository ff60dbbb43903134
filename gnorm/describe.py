"""Values in words, for the messages that name what a file wrote: ``a float (1.5)``, ``an integer
(12345678... (40 digits))``. Pure text; imported by the run model's validators and by the loader."""

from __future__ import annotations

import json
from typing import Any


def short(value: Any) -> str:
    """An integer in words short enough for one line: its digits, or its sign and digit count."""
    text = str(value)
    return text if len(text) <= 24 else f"{text[:8]}... ({len(text.lstrip('-'))} digits)"


def describe(value: Any) -> str:
    """What a TOML value is, with the value itself where it is short: ``a string ("soon")``, ``a table``."""
    kind = {bool: "a boolean", int: "an integer", float: "a float", str: "a string", list: "a list",
            dict: "a table"}.get(type(value), f"a {type(value).__name__}")
    if isinstance(value, (list, dict)):
        return kind
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{kind} ({short(value)})"
    text = json.dumps(value, default=str)
    return f"{kind} ({text if len(text) <= 80 else text[:77] + '...'})"
