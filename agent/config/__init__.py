"""Config: the schema (`schema`), its field types (`units`) and loading with key-path errors (`loader`)."""

from agent.config.loader import ConfigError, ConfigIssue, default_config_text, load_file, load_text
from agent.config.schema import Config

__all__ = ["Config", "ConfigError", "ConfigIssue", "default_config_text", "load_file", "load_text"]
