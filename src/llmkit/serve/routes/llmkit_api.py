"""llmkit's own routes beside the OpenAI ones: classify text, explain a prediction, give feedback on a response."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool

import llmkit.serve.schemas as s
from llmkit.serve.auth import authorize
from llmkit.serve.errors import ApiError
from llmkit.serve.state import server_state

router = APIRouter(prefix="/v1", dependencies=[Depends(authorize)], responses=s.ERRORS)


@router.post("/classify", response_model=s.ClassificationList)
async def classify(body: s.ClassifyRequest, request: Request):
    from llmkit.predict import classify_texts

    served = server_state(request).model(body.model, "classifier")

    def run():
        with served.lock:
            return classify_texts(served.net, served.tokenizer, served.labels, body.input, served.max_length)

    results = await run_in_threadpool(run)
    tokens = sum(len(ids) for ids in served.tokenizer(body.input, truncation=True, max_length=served.max_length)["input_ids"])
    return s.ClassificationList(model=served.id, usage=s.Usage(prompt_tokens=tokens, completion_tokens=0, total_tokens=tokens),
                                data=[s.Classification(index=i, label=r["label"], probabilities=r["probabilities"])
                                      for i, r in enumerate(results)])


@router.post("/explain", response_model=s.ExplainResult)
async def explain(body: s.ExplainRequest, request: Request):
    from llmkit.config import ExplainConfig
    from llmkit.errors import UserError
    from llmkit.explain import explain_loaded

    served = server_state(request).model(body.model)
    if served.net is None or served.kind == "encoder":
        raise ApiError(400, f"model '{served.id}' cannot be explained here: explanations need a classifier or a causal "
                       f"LM on the torch backend (it is a {served.kind} on {served.backend})", param="model",
                       code="wrong_model_kind")
    cfg = ExplainConfig(method=body.method, target=body.target, completion=body.completion, steps=body.steps)

    def run():
        with served.lock:  # gradients through the shared module: one explanation at a time per model
            return explain_loaded(served.net, served.tokenizer, served.kind, body.input, cfg, labels=served.labels,
                                  max_length=served.max_length, name=served.id)

    try:
        result = await run_in_threadpool(run)
    except UserError as err:
        raise ApiError(400, str(err), param="target" if "label" in str(err) or "target" in str(err) else None) from None
    return s.ExplainResult(**{**result.to_dict(), "model": served.id})


@router.post("/feedback", response_model=s.FeedbackAck)
async def feedback(body: s.FeedbackRequest, request: Request):
    state = server_state(request)
    if body.rating is None and body.correction is None and body.comment is None:
        raise ApiError(400, "send a rating (1 or -1), a correction or a comment", param="rating")
    entry = state.recent.get(body.response_id)
    if entry is None:
        entry = await run_in_threadpool(_logged, state.registry, body.response_id)
    if entry is None:
        raise ApiError(404, f"unknown response_id '{body.response_id}': not one of this server's recent responses",
                       param="response_id", code="response_not_found")
    fid = await run_in_threadpool(
        state.registry.add_feedback, entry["model"], response_id=body.response_id, rating=body.rating,
        prompt=entry.get("prompt"), response=entry.get("response"), correction=body.correction,
        extra={"kind": "feedback", "endpoint": entry.get("endpoint"), "comment": body.comment,
               "model_ref": entry.get("model_ref")})
    return s.FeedbackAck(id=fid, response_id=body.response_id)


def _logged(registry, response_id: str) -> dict | None:
    """A response the server logged (--log-requests) before it was restarted."""
    for row in reversed(registry.list_feedback()):
        if row["response_id"] == response_id and row["extra"].get("kind") == "request":
            return {"model": row["model"], "endpoint": row["extra"].get("endpoint"), "prompt": row["prompt"],
                    "response": row["response"], "model_ref": row["extra"].get("model_ref")}
    return None
