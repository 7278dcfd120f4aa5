"""llmkit's own routes beside the OpenAI ones: classify text, explain a prediction, give feedback on a response."""

from __future__ import annotations

import re
import time

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool

import llmkit.serve.schemas as s
from llmkit.config import ServeConfig
from llmkit.serve.auth import authorize
from llmkit.serve.errors import ApiError
from llmkit.serve.handling import timeout_error
from llmkit.serve.served import ServedModel, explainable, why_not_explainable
from llmkit.serve.state import server_state

router = APIRouter(prefix="/v1", dependencies=[Depends(authorize)], responses=s.ERRORS)


@router.post("/classify", response_model=s.ClassificationList)
async def classify(body: s.ClassifyRequest, request: Request):
    from llmkit.data.clean import clean_classifier_input
    from llmkit.predict import classify_texts

    served = server_state(request).model(body.model, "classifier")

    def run():  # tokenizing is CPU work too: all of it off the event loop
        # Under the model's lock, the count too: a fast tokenizer's padding and truncation are settings of
        # the one shared Rust object, so an unpadded call racing a padded one broke its batch (a 500 in the soak).
        with served.lock:
            cleaned = [clean_classifier_input(text) for text in body.input]  # what classify_texts reads
            tokens = sum(len(ids) for ids in served.tokenizer(cleaned, truncation=True, max_length=served.max_length)["input_ids"])
            return classify_texts(served.net, served.tokenizer, served.labels, body.input, served.max_length), tokens

    results, tokens = await run_in_threadpool(run)
    return s.ClassificationList(model=served.id, usage=s.Usage(prompt_tokens=tokens, completion_tokens=0, total_tokens=tokens),
                                data=[s.Classification(index=i, label=r["label"], probabilities=r["probabilities"])
                                      for i, r in enumerate(results)])


@router.post("/explain", response_model=s.ExplainResult)
async def explain(body: s.ExplainRequest, request: Request):
    """Bounded like generation: a place in the explain queue (429), the server's limits on tokens and
    work (400), and --timeout, checked between forward passes so the work stops there (408)."""
    from llmkit.errors import UserError
    from llmkit.explain import OutOfTime

    state = server_state(request)
    served = state.model(body.model)
    if not explainable(served):
        raise ApiError(400, f"model '{served.id}' cannot be explained here: {why_not_explainable(served)}", param="model",
                       code="wrong_model_kind")
    if body.messages is not None and served.kind != "causal":
        raise ApiError(400, f"model '{served.id}' is a classifier: it explains one text; send it as 'input', not "
                            "'messages'", param="messages", code="invalid_value")
    deadline = time.perf_counter() + state.cfg.timeout
    with state.explain_slot():
        try:
            result = await run_in_threadpool(_explain, state.cfg, served, body, deadline)
        except OutOfTime:
            raise timeout_error(state.cfg.timeout, "steps, a shorter input") from None
        except UserError as err:  # the explain stage names its flags (--target); here they are request fields
            field = (err.param or "").removeprefix("explain.") or ("target" if "label" in str(err) else None)
            message = re.sub(r"--(target|completion|method|steps)\b", r"\1", str(err).replace(" TEXT", ""))
            raise ApiError(400, message, param=field, code="invalid_value") from None
    return s.ExplainResult(**{**result.to_dict(), "model": served.id})


def _explain(cfg: ServeConfig, served: ServedModel, body: s.ExplainRequest, deadline: float):
    """In a worker thread: count the tokens, check the limits, wait for the model, explain."""
    from llmkit.config import ExplainConfig
    from llmkit.explain import OutOfTime, explain_loaded
    from llmkit.explain.budget import explain_work, explained_tokens

    # Counted under the model's lock: the tokenizer's padding settings are shared with classify and embeddings.
    if not served.lock.acquire(timeout=max(0.0, deadline - time.perf_counter())):
        raise OutOfTime
    completion, cut = body.completion, None
    text_field = "input" if body.messages is None else "messages"
    try:
        text = body.input if body.messages is None else _conversation(served, body.messages)
        n_input, n_completion = explained_tokens(served.tokenizer, served.kind, text, completion, served.max_length)
        # The web UI explains a long answer's beginning: cut to what the server explains, and to the model's context
        # (past it the question was cut instead, from the left)
        context = served.max_len or cfg.explain_max_tokens
        limit = min(cfg.explain_max_tokens, context)
        if body.truncate_completion and n_completion and n_input < limit < n_input + n_completion:
            keep = limit - n_input
            completion = served.tokenizer.decode(served.tokenizer(completion, add_special_tokens=False)["input_ids"][:keep])
            completion = completion.rstrip("\ufffd") or completion  # not half a character at the cut
            why = (f"the server explains at most {cfg.explain_max_tokens} tokens with the input" if limit < context
                   else f"the model's context is {context} tokens")
            cut = f"the completion is {n_completion} tokens; explained its first {keep} ({why})"
            n_completion = keep
    finally:
        served.lock.release()
    if n_input + n_completion > cfg.explain_max_tokens:
        param = text_field if n_input > cfg.explain_max_tokens else "completion"
        raise ApiError(400, f"'{param}' makes this explanation {n_input + n_completion} tokens; the server explains at most "
                       f"{cfg.explain_max_tokens} (explain_max_tokens, --explain-max-tokens); shorten it", param=param,
                       code="limit_exceeded")
    work = explain_work(body.method, n_input, n_completion, steps=body.steps)
    if work > cfg.explain_max_work:
        param = "steps" if body.method == "ig" else text_field
        how = f"{body.steps} steps x {n_input + n_completion} tokens" if body.method == "ig" else f"{n_input + n_completion} tokens"
        raise ApiError(400, f"method '{body.method}' over {how} runs {work} token positions through the model; the server "
                       f"allows {cfg.explain_max_work} (explain_max_work, --explain-max-work); use fewer steps, a shorter "
                       "input or method ig", param=param, code="limit_exceeded")
    explain_cfg = ExplainConfig(method=body.method, target=body.target, completion=completion, steps=body.steps)
    # Gradients through the shared module: one explanation at a time per model, waiting no longer than the deadline.
    if not served.lock.acquire(timeout=max(0.0, deadline - time.perf_counter())):
        raise OutOfTime
    try:
        result = explain_loaded(served.net, served.tokenizer, served.kind, text, explain_cfg, labels=served.labels,
                                max_length=served.max_length, name=served.id, deadline=deadline,
                                batch_tokens=cfg.explain_batch_tokens)
    finally:
        served.lock.release()
    if cut:
        result.warnings.append(cut)
    return result


def _conversation(served: ServedModel, messages: list[s.TextMessage]) -> str:
    """The prompt /v1/chat/completions makes of these messages: the model's chat template with the assistant's turn
    opened, so that a completion is explained as the answer the chat gave (not as text following a bare question)."""
    from llmkit.generate import chat_prompt

    plain = [{"role": "system" if m.role == "developer" else m.role, "content": m.text} for m in messages]
    try:
        return chat_prompt(served.tokenizer, plain)[0]
    except Exception as err:  # a template that rejects the roles or their order (jinja raises)
        raise ApiError(400, f"the model's chat template rejected the messages: {err}", param="messages") from None



@router.post("/feedback", response_model=s.FeedbackAck)
async def feedback(body: s.FeedbackRequest, request: Request):
    state = server_state(request)
    if body.rating is None and body.correction is None and not (body.comment or "").strip():
        # a blank comment alone was stored as a row that says nothing
        raise ApiError(400, "send a rating (1, 0 or -1), a correction or a comment that is not blank", param="rating",
                       code="invalid_value")
    entry = state.recent.get(body.response_id)
    if entry is None:
        entry = await run_in_threadpool(_logged, state.registry, body.response_id)
    if entry is None:
        raise ApiError(404, f"unknown response_id '{body.response_id}': not one of this server's recent responses "
                            "(after a restart, or from another server, only responses logged with --log-requests can "
                            "be rated)", param="response_id", code="response_not_found")
    responses = entry.get("responses") or [entry.get("response")]
    if body.choice >= len(responses):  # it rated choice 0 (overwriting that one's rating) without a word
        raise ApiError(400, f"'choice' = {body.choice}: response '{body.response_id}' has {len(responses)} choice"
                            f"{'s' if len(responses) != 1 else ''} (0 to {len(responses) - 1})", param="choice",
                       code="invalid_value")
    extra = {"kind": "feedback", "endpoint": entry.get("endpoint"), "comment": body.comment,
             "model_ref": entry.get("model_ref")}
    if len(responses) > 1:
        extra["choice"] = body.choice
    fid = await run_in_threadpool(
        state.registry.add_feedback, entry["model"], response_id=body.response_id, rating=body.rating,
        prompt=entry.get("prompt"), response=responses[body.choice], correction=body.correction, extra=extra)
    return s.FeedbackAck(id=fid, response_id=body.response_id)


def _logged(registry, response_id: str) -> dict | None:
    """A response the server logged (--log-requests) before it was restarted."""
    for row in reversed(registry.list_feedback(response_id=response_id)):
        if row["extra"].get("kind") == "request":
            return {"model": row["model"], "endpoint": row["extra"].get("endpoint"), "prompt": row["prompt"],
                    "response": row["response"], "model_ref": row["extra"].get("model_ref"),
                    "responses": row["extra"].get("choices_text")}
    return None
