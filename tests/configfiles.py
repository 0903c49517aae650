"""Writing a config file and taking the one-line error its loader raises: shared by the config tests of hbone
(`hbone.errors.ConfigError`) and microxds (`microxds.errors.ConfigError`, its own exception tree)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from hbone.errors import ConfigError

__all__ = ["load_error"]


def load_error(load: Callable[[Path], object], path: Path, text: str, error: type[Exception] = ConfigError) -> str:
    """Write `text` to `path`, load it, and return the message of the `error` the loader must raise."""
    path.write_text(text)
    with pytest.raises(error) as info:
        load(path)
    return str(info.value)
