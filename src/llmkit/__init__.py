"""llmkit: raw text to a trained, evaluated, served language model."""

__version__ = "0.1.0"
