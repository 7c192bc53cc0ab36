"""Typed, validated, frozen configuration: schema (defaults), presets, loading and overrides."""

from animate124.config.loader import config_hash, dump_yaml, from_dict, resolve_config, to_dict
from animate124.config.schema import SCHEMA_VERSION, Config

__all__ = ["SCHEMA_VERSION", "Config", "config_hash", "dump_yaml", "from_dict", "resolve_config", "to_dict"]
