"""``fastgw check-config``: a config file's problems as printable lines.

This module owns the text the CLI prints for a config check: one ``$.path: message`` line per
problem, in the order they were found, and nothing when the file is valid. The CLI maps a
non-empty list to exit status 2 (ARCHITECTURE A1).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from fastgw.config.load import load_config
from fastgw.errors import ConfigError


def check_config_file(path: str | Path, env: Mapping[str, str] = os.environ) -> list[str]:
    """Every problem of the config file at ``path``, one formatted line each; ``[]`` if valid."""
    try:
        load_config(path, env)
    except ConfigError as exc:
        return [str(problem) for problem in exc.problems]
    return []
