// The chat playground: model picker (adapters under their base), parameters, an optional JSON schema the
// answer must follow, a streamed conversation with stop, token probabilities on hover, feedback under
// every answer, and a classify box for classifier models.
import { api, ApiFailure, authHeaders, errorMessage, h, reach, thumbIcon } from "./lib.js";
import { explainButton } from "./explain.js";
import { fmtNumber, t } from "./i18n.js";
import { groupByParent } from "./models.js";
import { renderTokens } from "./tokens.js";

const MODEL_STORAGE = "llmkit.model";
const $ = (id) => document.getElementById(id);

/** Split a growing SSE byte stream into events; calls onData(dataString) per event. */
export function sseParser(onData) {
  let buffer = "";
  let data = [];
  const dispatch = () => {
    if (data.length) onData(data.join("\n"));
    data = [];
  };
  const feed = (text) => {
    buffer += text;
    // Hold back a trailing "\r": it may be the first half of a "\r\n" split across two reads.
    const cut = buffer.endsWith("\r") ? buffer.length - 1 : buffer.length;
    const lines = buffer.slice(0, cut).split(/\r\n|\r|\n/);
    buffer = lines.pop() + buffer.slice(cut);
    for (const line of lines) {
      if (line === "") dispatch();
      else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      // other fields (event:, id:, retry:) and comments (":") carry nothing we need
    }
  };
  const end = () => {
    if (buffer.startsWith("data:")) data.push(buffer.slice(5).replace(/^ /, ""));
    buffer = "";
    dispatch();
  };
  return { feed, end };
}

export function initChat() {
  const select = $("model-select");
  const messagesEl = $("messages");
  const prompt = $("prompt-input");
  const sendButton = $("send-button");
  const stopButton = $("stop-button");
  let models = [];
  let history = []; // [{role, content}] without the system prompt
  let controller = null;
  let loaded = false;

  // -- parameters ----------------------------------------------------------------------------------
  const bindOutput = (input, output, digits) => {
    const update = () => { output.textContent = Number(input.value).toFixed(digits); };
    input.addEventListener("input", update);
    update();
  };
  bindOutput($("temperature"), $("temperature-value"), 2);
  bindOutput($("top-p"), $("top-p-value"), 2);
  if (window.matchMedia("(max-width: 760px)").matches) $("settings").open = false;

  // -- JSON schema ---------------------------------------------------------------------------------
  const schemaInput = $("schema-input");
  let schemaProblem = null; // [message key, vars] while the box holds something that is not a schema

  function schemaError(problem) {
    schemaProblem = problem;
    $("schema-error").hidden = !problem;
    $("schema-error").textContent = problem ? t(...problem) : "";
    schemaInput.setAttribute("aria-invalid", String(Boolean(problem)));
  }

  /** The schema to send: undefined when the box is empty, null (and the error shown) when it is not JSON. */
  function schema() {
    const text = schemaInput.value.trim();
    if (!text) { schemaError(null); return undefined; }
    let parsed;
    try {
      parsed = JSON.parse(text);
    } catch (err) {
      schemaError(["schema.invalid", { error: err.message }]);
      return null;
    }
    if (!parsed || typeof parsed !== "object" || Array.isArray(parsed)) { schemaError(["schema.notObject", {}]); return null; }
    schemaError(null);
    return parsed;
  }
  schemaInput.addEventListener("input", () => {
    $("schema-on").hidden = !schemaInput.value.trim();
    if (schemaProblem) schema(); // clear the error as soon as the text is fixed
  });

  function params() {
    const out = { temperature: Number($("temperature").value), top_p: Number($("top-p").value) };
    // Empty max tokens: the server generates up to what the context leaves after the prompt.
    const maxInput = $("max-tokens");
    if (maxInput.value.trim() !== "") {
      const limit = Number(maxInput.max) || Infinity;
      const wanted = Math.max(1, Math.round(Number(maxInput.value) || 1));
      // As many as the context holds: left to the server, which counts the prompt (the context itself, sent, was
      // refused as prompt + max_tokens over the context, a number the user never typed).
      if (wanted >= limit) maxInput.value = "";
      else out.max_tokens = maxInput.value = wanted;
    }
    const seed = $("seed").value.trim();
    if (seed !== "" && Number.isInteger(Number(seed))) out.seed = Number(seed);
    return out;
  }

  // -- models --------------------------------------------------------------------------------------
  function banner(message) {
    $("chat-banner").hidden = !message;
    $("chat-banner").textContent = message || "";
  }

  async function loadModels() {
    try {
      models = (await api("/v1/models")).data || [];
      banner("");
    } catch (err) {
      models = [];
      const hint = err instanceof ApiFailure && err.status === 401 ? ` ${t("chat.setKey")}` : "";
      banner(`${t("chat.modelsFailed", { error: err.message })}${hint}`);
    }
    const previous = select.value || localStorage.getItem(MODEL_STORAGE);
    fillOptions();
    const preferred = models.find((m) => m.id === previous) || models.find((m) => m.kind === "causal") || models[0];
    if (preferred) select.value = preferred.id;
    modelChanged();
  }

  // Adapters (cards with a parent) are listed right under their base, indented.
  function fillOptions() {
    const value = select.value;
    select.replaceChildren(...groupByParent(models).map(({ item: m, depth, parent }) => h("option", { value: m.id,
      "data-parent": parent || undefined },
    parent ? "\u00a0".repeat(3 * depth) + t("chat.optionAdapter", { id: m.id })
      : t("chat.option", { id: m.id, kind: t(`kind.${m.kind || "model"}`) }))));
    if (!models.length) select.append(h("option", { value: "" }, t("chat.noModels")));
    if (value) select.value = value;
  }

  function modelChanged() {
    const model = models.find((m) => m.id === select.value);
    if (model) localStorage.setItem(MODEL_STORAGE, model.id);
    const kind = model ? model.kind : null;
    $("chat-panel").hidden = kind === "classifier";
    $("chat-params").hidden = kind !== "causal";
    $("classify-panel").hidden = kind !== "classifier";
    const chattable = kind === "causal";
    sendButton.disabled = !chattable || controller !== null;
    prompt.disabled = !chattable;
    const context = model && (model.context_length || model.max_model_len);
    $("max-tokens").max = context || "";
    if (context && Number($("max-tokens").value) >= context) $("max-tokens").value = ""; // up to what the context leaves
    $("max-tokens").placeholder = context ? t("chat.upTo", { n: fmtNumber(context) }) : t("chat.fillContext");
    const backend = model ? model.backend || "torch" : "";
    const hint = !model ? ""
      : kind === "causal" ? (context ? t("chat.hintCausalContext", { backend, n: fmtNumber(context) }) : t("chat.hintCausal", { backend }))
        : kind === "classifier" ? t("chat.hintClassifier")
          : t("chat.hintOther", { kind: t(`kind.${kind || "model"}`) });
    $("model-hint").replaceChildren(h("span", {}, hint),
      ...(model && model.parent ? [" · ", h("span", {}, t("chat.hintAdapter", { base: model.parent }))] : []));
  }
  select.addEventListener("change", modelChanged);

  // -- messages ------------------------------------------------------------------------------------
  function addBubble(role, text, attrs = {}) {
    $("messages-empty").hidden = true;
    const content = h("div", { class: "content" }, text);
    const label = h("div", { class: "role", "data-i18n": `role.${role}` }, t(`role.${role}`));
    const bubble = h("div", { class: `message ${role}`, ...attrs }, label, content);
    messagesEl.append(bubble);
    scrollDown();
    return { bubble, content };
  }

  function scrollDown() {
    messagesEl.scrollTop = messagesEl.scrollHeight;
  }

  function showError(message) {
    addBubble("error", message, { "data-testid": "chat-error", role: "alert" });
  }

  function setBusy(busy) {
    sendButton.disabled = busy || !models.some((m) => m.id === select.value && m.kind === "causal");
    stopButton.disabled = !busy;
    select.disabled = busy;
  }

  async function send() {
    const text = prompt.value.trim();
    const model = select.value;
    if (!text || controller || !model) return;
    const wanted = schema();
    if (wanted === null) {
      $("schema-box").open = true;
      schemaInput.focus();
      return; // the inline error says what is wrong; nothing is sent
    }
    const format = wanted === undefined ? {}
      : { response_format: { type: "json_schema", json_schema: { name: "ui_schema", schema: wanted, strict: true } } };
    prompt.value = "";
    addBubble("user", text);
    history.push({ role: "user", content: text });
    const system = $("system-prompt").value.trim();
    const messages = system ? [{ role: "system", content: system }, ...history] : [...history];
    const { bubble, content } = addBubble("assistant", "", { "data-testid": "assistant-message" });
    bubble.classList.add("streaming");

    controller = new AbortController();
    // Sent with the mouse: the button is about to be disabled, which would drop the focus on the page's body.
    if (document.activeElement === sendButton) prompt.focus();
    setBusy(true);
    let answer = "";
    const tokens = []; // logprobs.content entries, one per generated token
    let responseId = null;
    let failed = null;
    let stopped = false;
    try {
      const response = await reach("/v1/chat/completions", {
        method: "POST",
        headers: authHeaders({ "Content-Type": "application/json", Accept: "text/event-stream" }),
        body: JSON.stringify({ model, messages, stream: true, logprobs: true, top_logprobs: 5, ...params(), ...format }),
        signal: controller.signal,
      });
      if (!response.ok) throw new ApiFailure(await errorMessage(response), response.status);
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let done = false;
      const parser = sseParser((data) => {
        if (data === "[DONE]") { done = true; return; }
        let chunk;
        try {
          chunk = JSON.parse(data);
        } catch (_) {
          throw new ApiFailure(t("error.unreadable"), response.status); // not an answer's stream: a proxy's page
        }
        if (chunk.error) throw new ApiFailure(chunk.error.message || t("chat.streamFailed"), 500);
        responseId = chunk.id || responseId;
        const choice = chunk.choices && chunk.choices[0];
        const delta = choice && choice.delta;
        const logprobs = choice && choice.logprobs && choice.logprobs.content;
        if (Array.isArray(logprobs)) tokens.push(...logprobs);
        if (delta && typeof delta.content === "string" && delta.content) {
          answer += delta.content;
          content.textContent = answer;
          scrollDown();
        }
      });
      while (!done) {
        let read;
        try {
          read = await reader.read();
        } catch (err) {
          if (err.name === "AbortError") throw err;
          throw new ApiFailure(t("chat.brokeOff"), 0); // the server stopped or the connection dropped mid-answer
        }
        if (read.done) { parser.end(); break; }
        parser.feed(decoder.decode(read.value, { stream: true }));
      }
      // A stream ends with [DONE]: one that closed before it is an answer cut short, not a whole one.
      if (!done) throw new ApiFailure(t("chat.brokeOff"), 0);
      if (done) await reader.cancel().catch(() => {});
    } catch (err) {
      if (err.name === "AbortError") stopped = true;
      else failed = err.message || String(err);
    } finally {
      controller = null;
      const stopFocused = document.activeElement === stopButton;
      setBusy(false);
      if (stopFocused) prompt.focus(); // Stop is disabled now: keep the keyboard in the composer
      bubble.classList.remove("streaming");
    }

    if (failed && !answer) {
      bubble.remove();
      history.pop(); // the turn did not happen: let the user send it again
      showError(failed);
      return;
    }
    if (stopped) bubble.append(h("div", { class: "note", "data-i18n": "chat.stopped" }, t("chat.stopped")));
    if (failed) bubble.append(h("div", { class: "note error-text" }, failed));
    if (!answer) content.append(h("span", { "data-i18n": "chat.emptyAnswer" }, t("chat.emptyAnswer")));
    else renderTokens(content, tokens, answer); // plain text stays when no logprobs came
    history.push({ role: "assistant", content: answer });
    if (responseId) {
      bubble.dataset.responseId = responseId;
      bubble.append(feedbackBar(responseId, answer));
      const card = models.find((m) => m.id === select.value);
      if (answer && card && card.explainable) { // not an adapter (no module of its own), not llama.cpp
        const model = card.id;
        // The answer as the chat gave it: after the system prompt and the earlier turns, in the model's chat template
        // (the question alone, untemplated, made a chat model's own answer look improbable: p = 0.000).
        const conversation = messages.slice();
        // A long answer: its first tokens are explained (with a warning) rather than the request refused.
        bubble.append(explainButton(() => ({ model, messages: conversation, completion: answer, truncate_completion: true })));
      }
    }
    scrollDown();
  }

  // -- feedback ------------------------------------------------------------------------------------
  function feedbackBar(responseId, answer) {
    const status = h("span", { class: "feedback-status", "data-testid": "feedback-status", "aria-live": "polite" });
    const record = async (body, button) => {
      status.textContent = t("fb.sending");
      try {
        await api("/v1/feedback", { method: "POST", body: { response_id: responseId, ...body } });
        status.textContent = t("fb.recorded");
        bar.querySelectorAll(".rate").forEach((b) => b.classList.toggle("chosen", b === button));
        return true;
      } catch (err) {
        status.textContent = t("fb.failed", { error: err.message });
        return false;
      }
    };
    const up = h("button", { type: "button", class: "rate", "data-testid": "thumbs-up", title: t("fb.good"),
      "aria-label": t("fb.good"), "data-i18n-title": "fb.good", "data-i18n-aria-label": "fb.good", onclick: () => record({ rating: 1 }, up) }, thumbIcon());
    const down = h("button", { type: "button", class: "rate", "data-testid": "thumbs-down", title: t("fb.bad"),
      "aria-label": t("fb.bad"), "data-i18n-title": "fb.bad", "data-i18n-aria-label": "fb.bad", onclick: () => record({ rating: -1 }, down) }, thumbIcon(true));
    const input = h("textarea", { rows: 3, "data-testid": "correction-input", "aria-label": t("fb.corrected"),
      "data-i18n-aria-label": "fb.corrected" });
    input.value = answer;
    const form = h("form", { class: "correction", hidden: true },
      input,
      h("button", { type: "submit", "data-testid": "correction-submit", "data-i18n": "fb.submit" }, t("fb.submit")));
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const correction = input.value.trim();
      if (!correction) { status.textContent = t("fb.writeFirst"); return; }
      // A correction says the answer was not right as given: it carries a thumbs-down.
      if (await record({ rating: -1, correction }, down)) form.hidden = true;
    });
    const correct = h("button", { type: "button", class: "secondary small", "data-testid": "correct-button",
      "data-i18n": "fb.correct", onclick: () => { form.hidden = !form.hidden; if (!form.hidden) input.focus(); } },
    t("fb.correct"));
    const bar = h("div", { class: "feedback" }, h("div", { class: "feedback-buttons" }, up, down, correct, status), form);
    return bar;
  }

  // -- classify ------------------------------------------------------------------------------------
  $("classify-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const lines = $("classify-input").value.split("\n").map((s) => s.trim()).filter(Boolean);
    const out = $("classify-result");
    if (!lines.length) return;
    out.replaceChildren(h("p", { class: "hint" }, t("cls.working")));
    try {
      const body = await api("/v1/classify", { method: "POST",
        body: { model: select.value, input: lines.length === 1 ? lines[0] : lines } });
      out.replaceChildren(...body.data.map((item) => classification(lines[item.index], item)));
    } catch (err) {
      out.replaceChildren(h("p", { class: "error-text", role: "alert", "data-testid": "chat-error" }, err.message));
    }
  });

  function classification(text, item) {
    const probs = Object.entries(item.probabilities || {}).sort((a, b) => b[1] - a[1]);
    return h("div", { class: "card classification" },
      h("p", { class: "classified-text" }, text),
      h("p", {}, h("span", { "data-i18n": "cls.label" }, t("cls.label")), " ", h("strong", { "data-testid": "classify-label" }, item.label)),
      ...probs.map(([name, p]) => h("div", { class: "prob" },
        h("span", { class: "prob-name" }, name),
        h("span", { class: "prob-bar" }, h("span", { style: `width:${(p * 100).toFixed(1)}%` })),
        h("span", { class: "prob-value" }, fmtNumber(p, 3)))),
      ...(models.find((m) => m.id === select.value)?.explainable
        ? [explainButton(() => ({ model: select.value, input: text, target: item.label }))] : []));
  }

  // -- wiring --------------------------------------------------------------------------------------
  $("composer").addEventListener("submit", (event) => { event.preventDefault(); send(); });
  prompt.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      send();
    }
  });
  stopButton.addEventListener("click", () => controller && controller.abort());
  $("clear-chat").addEventListener("click", () => {
    if (controller) controller.abort();
    history = [];
    messagesEl.replaceChildren($("messages-empty"));
    $("messages-empty").hidden = false;
  });

  // A new language: the option labels and the hint are built here; other strings carry data-i18n.
  document.addEventListener("llmkit:locale", () => {
    fillOptions();
    modelChanged();
    if (schemaProblem) schemaError(schemaProblem);
  });

  return {
    shown: () => {
      if (!loaded) { loaded = true; loadModels(); }
    },
    reload: loadModels,
  };
}
