"""Helpers shared by the recipe configs."""

from __future__ import annotations

from typing import Any


def parse_arguments(arg: str | None, defaults: dict[str, Any]) -> dict[str, Any]:
  """'alpha=0.5,resolution=160' -> typed values (types taken from `defaults`)."""
  values = dict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, sep, raw = item.partition("=")
    if not sep or key not in defaults:
      raise ValueError(f"config argument {item!r} is not of the form NAME=VALUE with NAME "
                       f"in {', '.join(defaults)}")
    kind = type(defaults[key])
    if kind is bool:
      if raw.lower() not in ("true", "false", "1", "0"):
        raise ValueError(f"config argument {key}={raw!r} must be true or false")
      values[key] = raw.lower() in ("true", "1")
    else:
      values[key] = kind(raw)
  return values
