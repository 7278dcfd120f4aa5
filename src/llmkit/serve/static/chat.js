// The chat playground: model picker, parameters, a streamed conversation with stop, feedback under every
// answer, and a classify box for classifier models.
import { api, ApiFailure, authHeaders, errorMessage, h, thumbIcon } from "./lib.js";
import { explainButton } from "./explain.js";

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

  function params() {
    const out = { temperature: Number($("temperature").value), top_p: Number($("top-p").value) };
    // Empty max tokens: the server generates up to what the context leaves after the prompt.
    const maxInput = $("max-tokens");
    if (maxInput.value.trim() !== "") {
      const limit = Number(maxInput.max) || Infinity;
      out.max_tokens = Math.min(Math.max(1, Math.round(Number(maxInput.value) || 1)), limit);
      maxInput.value = out.max_tokens;
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
      const hint = err instanceof ApiFailure && err.status === 401 ? " Set your API key in the header." : "";
      banner(`Could not list the models: ${err.message}.${hint}`);
    }
    const previous = select.value || localStorage.getItem(MODEL_STORAGE);
    select.replaceChildren(...models.map((m) => h("option", { value: m.id }, `${m.id} (${m.kind || "model"})`)));
    if (!models.length) select.append(h("option", { value: "" }, "no models"));
    const preferred = models.find((m) => m.id === previous) || models.find((m) => m.kind === "causal") || models[0];
    if (preferred) select.value = preferred.id;
    modelChanged();
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
    if (context && Number($("max-tokens").value) > context) $("max-tokens").value = context;
    $("max-tokens").placeholder = context ? `up to ${context}` : "fill context";
    $("model-hint").textContent = !model ? ""
      : kind === "causal" ? `${model.backend || "torch"} backend${context ? `, context ${context} tokens` : ""}`
        : kind === "classifier" ? "A classifier: it labels text instead of chatting."
          : `A ${kind || "non-causal"} model: nothing to chat with here.`;
  }
  select.addEventListener("change", modelChanged);

  // -- messages ------------------------------------------------------------------------------------
  function addBubble(role, text, attrs = {}) {
    $("messages-empty").hidden = true;
    const content = h("div", { class: "content" }, text);
    const bubble = h("div", { class: `message ${role}`, ...attrs }, h("div", { class: "role" }, role), content);
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
    prompt.value = "";
    addBubble("user", text);
    history.push({ role: "user", content: text });
    const system = $("system-prompt").value.trim();
    const messages = system ? [{ role: "system", content: system }, ...history] : [...history];
    const { bubble, content } = addBubble("assistant", "", { "data-testid": "assistant-message" });
    bubble.classList.add("streaming");

    controller = new AbortController();
    setBusy(true);
    let answer = "";
    let responseId = null;
    let failed = null;
    let stopped = false;
    try {
      const response = await fetch("/v1/chat/completions", {
        method: "POST",
        headers: authHeaders({ "Content-Type": "application/json", Accept: "text/event-stream" }),
        body: JSON.stringify({ model, messages, stream: true, ...params() }),
        signal: controller.signal,
      });
      if (!response.ok) throw new ApiFailure(await errorMessage(response), response.status);
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let done = false;
      const parser = sseParser((data) => {
        if (data === "[DONE]") { done = true; return; }
        const chunk = JSON.parse(data);
        if (chunk.error) throw new ApiFailure(chunk.error.message || "the stream failed", 500);
        responseId = chunk.id || responseId;
        const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
        if (delta && typeof delta.content === "string" && delta.content) {
          answer += delta.content;
          content.textContent = answer;
          scrollDown();
        }
      });
      while (!done) {
        const { value, done: ended } = await reader.read();
        if (ended) { parser.end(); break; }
        parser.feed(decoder.decode(value, { stream: true }));
      }
      if (done) await reader.cancel().catch(() => {});
    } catch (err) {
      if (err.name === "AbortError") stopped = true;
      else failed = err.message || String(err);
    } finally {
      controller = null;
      setBusy(false);
      bubble.classList.remove("streaming");
    }

    if (failed && !answer) {
      bubble.remove();
      history.pop(); // the turn did not happen: let the user send it again
      showError(failed);
      return;
    }
    if (stopped) bubble.append(h("div", { class: "note" }, "stopped"));
    if (failed) bubble.append(h("div", { class: "note error-text" }, failed));
    if (!answer) content.textContent = "(empty answer)";
    history.push({ role: "assistant", content: answer });
    if (responseId) {
      bubble.dataset.responseId = responseId;
      bubble.append(feedbackBar(responseId, answer));
      const asked = history.length >= 2 ? history[history.length - 2].content : "";
      if (asked && answer) {
        const model = select.value;
        bubble.append(explainButton(() => ({ model, input: asked, completion: answer })));
      }
    }
    scrollDown();
  }

  // -- feedback ------------------------------------------------------------------------------------
  function feedbackBar(responseId, answer) {
    const status = h("span", { class: "feedback-status", "data-testid": "feedback-status", "aria-live": "polite" });
    const record = async (body, button) => {
      status.textContent = "sending…";
      try {
        await api("/v1/feedback", { method: "POST", body: { response_id: responseId, ...body } });
        status.textContent = "thanks — recorded";
        bar.querySelectorAll(".rate").forEach((b) => b.classList.toggle("chosen", b === button));
        return true;
      } catch (err) {
        status.textContent = `not recorded: ${err.message}`;
        return false;
      }
    };
    const up = h("button", { type: "button", class: "rate", "data-testid": "thumbs-up", title: "Good answer",
      "aria-label": "Good answer", onclick: () => record({ rating: 1 }, up) }, thumbIcon());
    const down = h("button", { type: "button", class: "rate", "data-testid": "thumbs-down", title: "Bad answer",
      "aria-label": "Bad answer", onclick: () => record({ rating: -1 }, down) }, thumbIcon(true));
    const input = h("textarea", { rows: 3, "data-testid": "correction-input", "aria-label": "Corrected answer" });
    input.value = answer;
    const form = h("form", { class: "correction", hidden: true },
      input,
      h("button", { type: "submit", "data-testid": "correction-submit" }, "Submit correction"));
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const correction = input.value.trim();
      if (!correction) { status.textContent = "write the corrected answer first"; return; }
      // A correction says the answer was not right as given: it carries a thumbs-down.
      if (await record({ rating: -1, correction }, down)) form.hidden = true;
    });
    const correct = h("button", { type: "button", class: "secondary small", "data-testid": "correct-button",
      onclick: () => { form.hidden = !form.hidden; if (!form.hidden) input.focus(); } }, "Correct");
    const bar = h("div", { class: "feedback" }, h("div", { class: "feedback-buttons" }, up, down, correct, status), form);
    return bar;
  }

  // -- classify ------------------------------------------------------------------------------------
  $("classify-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const lines = $("classify-input").value.split("\n").map((s) => s.trim()).filter(Boolean);
    const out = $("classify-result");
    if (!lines.length) return;
    out.replaceChildren(h("p", { class: "hint" }, "classifying…"));
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
      h("p", {}, "label: ", h("strong", { "data-testid": "classify-label" }, item.label)),
      ...probs.map(([name, p]) => h("div", { class: "prob" },
        h("span", { class: "prob-name" }, name),
        h("span", { class: "prob-bar" }, h("span", { style: `width:${(p * 100).toFixed(1)}%` })),
        h("span", { class: "prob-value" }, p.toFixed(3)))),
      explainButton(() => ({ model: select.value, input: text, target: item.label })));
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

  return {
    shown: () => {
      if (!loaded) { loaded = true; loadModels(); }
    },
    reload: loadModels,
  };
}
