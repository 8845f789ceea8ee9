"""Where the files tfquant ships live: in the installed package, or in a source checkout.

``setup.py`` installs the top-level ``configs/`` folder as ``tfquant/configs/`` (package data),
so a wheel carries the model presets and recipes; a checkout run in place reads ``configs/``.
"""
from __future__ import annotations

import os

from .errors import UserError

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
RESOURCES_DIR = os.path.join(PACKAGE_DIR, "resources")        # eval set, calibration text, their recipe
_CONFIG_DIRS = (os.path.join(PACKAGE_DIR, "configs"),            # installed
                os.path.join(os.path.dirname(PACKAGE_DIR), "configs"))  # source checkout


def config_path(name: str) -> str:
    """A shipped YAML (``gptj-tiny.yaml``, ``recipes/fast.yaml``), wherever tfquant is installed."""
    for directory in _CONFIG_DIRS:
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            return path
    raise UserError(f"shipped config {name} not found in {' or '.join(_CONFIG_DIRS)} (reinstall tfquant)")


def presets() -> list:
    """The names of the shipped recipes (``configs/recipes/NAME.yaml``), sorted."""
    for directory in _CONFIG_DIRS:
        folder = os.path.join(directory, "recipes")
        if os.path.isdir(folder):
            return sorted(f[:-5] for f in os.listdir(folder) if f.endswith(".yaml"))
    return []
