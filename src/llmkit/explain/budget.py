"""What one explanation costs, before it runs: the tokens it feeds the model and its work (token
positions through the model), so a server can refuse an explanation over its limits up front.

Work is rows x tokens per row: Integrated Gradients runs `steps` rows (each a forward and a
backward), occlusion one row per window, Kernel SHAP one row per coalition, attention one row. The
faithfulness check adds at most 6 x 10 + 1 rows of forwards, whatever the method.
"""

from __future__ import annotations

from llmkit.explain.attribution import shap_samples


def explained_tokens(tokenizer, kind: str, text: str, completion: str | None, max_length: int) -> tuple[int, int]:
    """(input tokens, completion tokens) the model will be fed; a classifier's input is truncated at max_length."""
    if kind == "classifier":
        return min(len(tokenizer(text)["input_ids"]), max_length), 0
    from llmkit.generate import encode_prompt

    comp = len(tokenizer(completion, add_special_tokens=False)["input_ids"]) if completion else 0
    return len(encode_prompt(tokenizer, text)), comp


def explain_work(method: str, input_tokens: int, completion_tokens: int = 0, *, steps: int = 50, span: int = 1,
                 samples: int = 0) -> int:
    """Token positions the attribution runs through the model (an upper bound: special tokens count as free)."""
    row = input_tokens + completion_tokens
    if method == "ig":
        rows = steps
    elif method == "occlusion":
        rows = max(1, input_tokens - span + 1)
    elif method == "shap":
        rows = shap_samples(input_tokens, samples) + 1
    else:
        rows = 1
    return rows * row
