"""How report tables write numbers."""

from __future__ import annotations

from llmkit.eval.report import format_number


def test_numbers_keep_places_for_their_size_and_rates_keep_one_decimal() -> None:
    assert [format_number(v) for v in (2.76543, 74.3412, 1242.04, 1234567, None, "x")] == \
        ["2.7654", "74.34", "1,242.0", "1,234,567", "-", "x"]
    # a slow decode printed "7.4000" tokens/s beside a fast one's "429.3"
    assert format_number(7.4, "decode_tokens_per_s") == "7.4" and format_number(429.31, "prefill_tokens_per_s") == "429.3"
    assert format_number(0.0123, "ttft_s") == "0.0123"  # a time keeps its places
    assert format_number(4.258, "size_mb") == "4.26" and format_number(439.31, "size_mb") == "439.3"
