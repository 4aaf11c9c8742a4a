"""fastgw configuration: YAML file → frozen, validated ``Config`` (ARCHITECTURE A2).

``load_config(path)`` reads a file; ``parse_config(data, base_dir=..., env=...)`` takes parsed
YAML; both raise one ``ConfigError`` carrying every ``Problem`` (``$.path: message``).
``check_config_file(path)`` is what ``fastgw check-config`` prints. The model classes are in
``fastgw.config.model``; the key reference is ``docs/configuration.md``.
"""

from fastgw.config.check import check_config_file
from fastgw.config.load import load_config, parse_config
from fastgw.config.model import Config
from fastgw.errors import ConfigError, Problem

__all__ = ["Config", "ConfigError", "Problem", "check_config_file", "load_config", "parse_config"]
