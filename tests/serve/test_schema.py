"""schemathesis against the running server's OpenAPI schema: no 5xx, and responses conform to it.

Each operation's cases come from schemathesis's hypothesis strategy (valid and invalid bodies),
run here directly rather than through its pytest plugin.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from llmkit.serve.errors import TYPES


def _check(case) -> None:
    # Keep generations short: the schema allows max_tokens up to the server limit (and n up to its --max-n).
    if isinstance(case.body, dict) and isinstance(case.body.get("max_tokens"), int):
        case.body["max_tokens"] = min(case.body["max_tokens"], 4)
    if isinstance(case.body, dict) and isinstance(case.body.get("n"), (int, float)):
        case.body["n"] = min(case.body["n"], 2)
    # best_of is accepted only equal to n, which a JSON Schema cannot say (test_sampling_fields checks the 400 otherwise)
    if isinstance(case.body, dict) and isinstance(case.body.get("best_of"), (int, float)) and case.body["best_of"] >= 1:
        case.body["best_of"] = case.body.get("n", 1) if isinstance(case.body.get("n"), (int, float)) else 1
    response = case.call(timeout=60)
    assert response.status_code < 500, f"{case.method} {case.path} -> {response.status_code}: {response.text[:500]}"
    case.validate_response(response)
    if response.status_code >= 400:
        error = response.json()["error"]
        assert error["type"] in set(TYPES.values()) and error["message"], error


@pytest.mark.slow
def test_api_conforms_and_never_fails(server):
    schema = schemathesis.openapi.from_url(server.base_url + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/completions", "/v1/chat/completions", "/v1/embeddings", "/v1/classify",
                                              "/v1/feedback", "/v1/models", "/health", "/metrics"}
    for op in operations:
        run = settings(max_examples=20, deadline=None, derandomize=True, database=None,
                       suppress_health_check=list(HealthCheck))(given(case=op.as_strategy())(_check))
        run()
