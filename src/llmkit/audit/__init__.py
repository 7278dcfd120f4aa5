"""Audits of trained models.

- `bias_audit`: classifiers — counterfactual swaps of gender, name, nationality and religion terms;
  causal LMs — stereotyped vs other sentence pairs by likelihood and the sentiment of completions.
- `privacy_audit`: causal LMs — PII in samples, verbatim continuation of training text, and the
  exposure of canaries planted by `llmkit train pretrain --canaries N`.
"""

from llmkit.audit.bias import BiasReport, bias_audit
from llmkit.audit.lm_bias import LmBiasReport
from llmkit.audit.privacy import privacy_audit
from llmkit.audit.privacy_report import PrivacyReport

__all__ = ["BiasReport", "LmBiasReport", "PrivacyReport", "bias_audit", "privacy_audit"]
