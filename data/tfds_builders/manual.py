"""Finds a builder's source files in the TFDS manual directory, if one was given."""

from __future__ import annotations

from pathlib import Path


def manual_dir(dl_manager) -> Path | None:
  """The manual directory if it exists and is non-empty, else None (then the builder downloads)."""
  try:
    return Path(str(dl_manager.manual_dir))
  except AssertionError:  # Not configured, missing or empty.
    return None
