// Entry point: hash routing between the chat playground (#chat) and the dashboard (#dashboard), the
// language switch (i18n.js) and the API key field (kept in localStorage, sent as a Bearer token by every request).
import { initChat } from "./chat.js";
import { initDashboard } from "./dashboard.js";
import { getLocale, setLocale, translatePage } from "./i18n.js";
import { getApiKey, setApiKey } from "./lib.js";

const VIEWS = ["chat", "dashboard"];
const listeners = { chat: () => {}, dashboard: () => {} };

function currentView() {
  const name = location.hash.replace(/^#/, "");
  return VIEWS.includes(name) ? name : "chat";
}

function show() {
  const active = currentView();
  for (const name of VIEWS) {
    const on = name === active;
    document.getElementById(`view-${name}`).hidden = !on;
    const tab = document.getElementById(`tab-${name}`);
    tab.setAttribute("aria-selected", String(on));
    tab.classList.toggle("active", on);
  }
  listeners[active]();
}

function initApiKey(onChange) {
  const input = document.getElementById("api-key");
  input.value = getApiKey();
  input.addEventListener("change", () => {
    setApiKey(input.value.trim());
    onChange();
  });
}

function initLanguage() {
  const picker = document.getElementById("lang-select");
  translatePage();
  picker.value = getLocale();
  picker.addEventListener("change", () => setLocale(picker.value));
}

document.addEventListener("DOMContentLoaded", () => {
  initLanguage();
  const chat = initChat();
  const dashboard = initDashboard();
  listeners.chat = chat.shown;
  listeners.dashboard = dashboard.shown;
  initApiKey(() => { chat.reload(); dashboard.reload(); });
  window.addEventListener("hashchange", show);
  show();
});
