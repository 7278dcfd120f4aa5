"""The registry: what llmkit made and from what (registry.store), its tables (registry.schema) and the rule
for names (registry.names). Everything callers use is here."""

from llmkit.registry.names import (
    NAME_RULE,
    NAME_RULE_TEXT,
    NAMED_BY_USER,
    RECORD_TYPES,
    check_name,
    default_name,
    given_or_default,
)
from llmkit.registry.schema import (
    MIGRATIONS,
    SCHEMA_VERSION,
    alias_moves,
    feedback,
    lineage,
    metadata,
    records,
    registry_state,
    schema_table,
)
from llmkit.registry.store import Record, Registry, RegistryUnavailable, located, safe_url

__all__ = ["MIGRATIONS", "NAMED_BY_USER", "NAME_RULE", "NAME_RULE_TEXT", "RECORD_TYPES", "SCHEMA_VERSION", "Record",
           "Registry", "RegistryUnavailable", "alias_moves", "check_name", "default_name", "feedback", "given_or_default",
           "lineage", "located", "metadata", "records", "registry_state", "safe_url", "schema_table"]
