"""Reading a JSON or YAML file a person names (settings.yaml, a results.json): a missing file or one that does
not parse becomes one actionable line, raised as the caller's own error type (its exit code)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import yaml

_PARSERS: dict[str, tuple[Callable[[str], Any], type[Exception]]] = {
    "JSON": (json.loads, json.JSONDecodeError),
    "YAML": (yaml.safe_load, yaml.YAMLError),
}


def read_data(path: Path, fmt: Literal["JSON", "YAML"], error: Callable[[str], Exception], label: str = "", missing: str = "") -> Any:
    """The parsed content of `path`; raises `error(line)` when the file is absent or is not valid `fmt`.

    `label` names the file in the lines (default: its path); `missing` is the line for an absent file
    (default: "<label> not found"), where the caller can say how to get one.
    """
    label = label or str(path)
    parse, invalid = _PARSERS[fmt]
    try:
        return parse(path.read_text())
    except FileNotFoundError:
        raise error(missing or f"{label} not found") from None
    except invalid as exc:
        raise error(f"{label} is not valid {fmt}: {exc}") from None
