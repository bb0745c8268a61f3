"""Config: the schema (`schema`), its field types (`units`), loading with key-path errors (`loader`), and the
check `validate`, startup and reload share (`check`)."""

from agent.config.check import Checked, check_file, warnings_for
from agent.config.loader import ConfigError, ConfigIssue, default_config_text, load_file, load_text
from agent.config.schema import Config

__all__ = ["Checked", "Config", "ConfigError", "ConfigIssue", "check_file", "default_config_text", "load_file",
           "load_text", "warnings_for"]
