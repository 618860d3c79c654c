"""What several commands share."""

from __future__ import annotations

from xdream import config as config_mod


def load_config(path: str | None) -> config_mod.Config:
    """A config file, or the embedded default for None or 'default'."""
    return config_mod.load(None if path in (None, "default") else path)
