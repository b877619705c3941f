"""``KEY=VALUE,...`` option strings (``--instance-optimization-settings``, ``--finer-grid-settings``): one parser,
each value typed like the setting it replaces, one-line errors naming the option's settings."""
from __future__ import annotations

from typing import Any, Collection

from nnreg.utilities.errors import ConfigurationError


def parse_key_values(text: str, kinds: dict[str, type], what: str,
                     nullable: Collection[str] = ()) -> dict[str, Any]:
    """``"a=1, b=x"`` -> ``{"a": kinds["a"]("1"), ...}``; ``bool`` values are ``true/false/1/0``, ``none`` gives None
    for the keys in ``nullable``. Errors read ``"<what> setting 'ITEM' ..."``."""
    overrides: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = (part.strip() for part in item.partition("="))
        if not sep or key not in kinds:
            raise ConfigurationError(f"{what} setting '{item}' is not KEY=VALUE with KEY one of {', '.join(kinds)}")
        kind, lowered = kinds[key], value.lower()
        if key in nullable and lowered == "none":
            overrides[key] = None
        elif kind is bool:
            if lowered not in ("true", "false", "1", "0"):
                raise ConfigurationError(f"{what} setting '{item}': {value!r} is not true or false")
            overrides[key] = lowered in ("true", "1")
        else:
            try:
                overrides[key] = kind(value)
            except ValueError:
                raise ConfigurationError(f"{what} setting '{item}': {value!r} is not a valid {kind.__name__}") from None
    return overrides
