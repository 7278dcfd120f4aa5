"""Audits of trained models: `bias_audit` swaps gender, name, nationality and religion terms and
measures how much a classifier's predictions move."""

from llmkit.audit.bias import BiasReport, bias_audit

__all__ = ["BiasReport", "bias_audit"]
