"""Configuration: one pydantic section per command (`sections`), read from YAML files with flag
overrides on top (`files`). Everything is importable from `llmkit.config`."""

from llmkit.config.files import (
    RENAMED_SECTIONS,
    load_section,
    read_config_file,
    render_defaults,
    validate_section,
)
from llmkit.config.preference import DpoConfig, GrpoConfig, KtoConfig, OrpoConfig, PreferenceConfig
from llmkit.config.sections import *  # noqa: F403  (every section model and the backend spellings)
from llmkit.config.sections import SECTIONS
from llmkit.config.tuning import TuneConfig, TuneSpacesConfig, duration_s

__all__ = ["RENAMED_SECTIONS", "SECTIONS", "DpoConfig", "GrpoConfig", "KtoConfig", "OrpoConfig", "PreferenceConfig", "TuneConfig", "TuneSpacesConfig", "duration_s", "load_section", "read_config_file", "render_defaults", "validate_section"]
