"""Configuration: one pydantic section per command (`sections`), read from YAML files with flag
overrides on top (`files`). Everything is importable from `llmkit.config`."""

from llmkit.config import sections
from llmkit.config.auditing import BiasAuditConfig, ExplainConfig, PrivacyAuditConfig
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

# every section model (DataConfig, PretrainConfig, EvalConfig, ...) too: `from llmkit.config import *` gives them all
_SECTION_MODELS = sorted(name for name, value in vars(sections).items()
                         if isinstance(value, type) and value.__module__ == sections.__name__ and name.endswith("Config"))
__all__ = [*_SECTION_MODELS, "RENAMED_SECTIONS", "SECTIONS", "BiasAuditConfig", "ExplainConfig", "PrivacyAuditConfig", "DpoConfig", "GrpoConfig", "KtoConfig", "OrpoConfig", "PreferenceConfig", "TuneConfig", "TuneSpacesConfig", "duration_s", "load_section", "read_config_file", "render_defaults", "validate_section"]
