// Phone page: the doctor's feedback and the chat update live (server-sent events); the patient
// sends messages with the page's CSRF token. A revoked or expired link reloads into its notice.
"use strict";
(function () {
  const base = document.body.dataset.base;
  const lang = document.body.dataset.lang;
  const csrf = document.body.dataset.csrf;
  const T = JSON.parse(document.getElementById("phone-strings").textContent);
  const live = document.getElementById("live");
  const q = `?lang=${encodeURIComponent(lang)}`;

  function p(text, cls, id) { const e = document.createElement("p"); if (cls) e.className = cls; if (id) e.id = id; e.textContent = text; return e; }
  function renderFeedback(f) {
    const box = document.getElementById("feedback-body");
    box.replaceChildren();
    if (!f) { box.append(p(T.feedback_waiting, "hint", "feedback-waiting")); return; }
    if (f.urgent) box.append(p(T.urgent, "urgent"));
    box.append(p(f.name, "headline", "feedback-label"), p(f.recommendation, "", "feedback-text"), p(`${T.by} ${f.doctor}`, "small"));
  }
  function renderMessages(messages) {
    const log = document.getElementById("chat-log");
    log.replaceChildren();
    if (!messages.length) { const li = document.createElement("li"); li.className = "hint empty"; li.textContent = T.no_messages; log.append(li); }
    for (const m of messages) {
      const li = document.createElement("li");
      li.className = `msg ${m.sender}`;
      const who = document.createElement("span"); who.className = "who"; who.textContent = m.sender === "patient" ? T.you : T.staff;
      const text = document.createElement("span"); text.className = "text"; text.textContent = m.text;
      li.append(who, " ", text);
      log.append(li);
    }
  }
  async function refresh() {
    const resp = await fetch(`${base}/state${q}`, { headers: { Accept: "application/json" } });
    if (resp.status === 410 || resp.status === 404) { window.location.reload(); return; }
    if (!resp.ok) return;
    const r = await resp.json();
    renderFeedback(r.feedback);
    renderMessages(r.messages);
  }
  document.getElementById("chat-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const text = document.getElementById("chat-text");
    const error = document.getElementById("chat-error");
    const button = document.getElementById("chat-send");
    button.disabled = true; button.textContent = T.sending; error.hidden = true;
    try {
      const resp = await fetch(`${base}/messages${q}`, {
        method: "POST", headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
        body: JSON.stringify({ text: text.value }) });
      if (resp.ok) { text.value = ""; await refresh(); }
      else {
        const body = await resp.json().catch(() => ({}));
        error.textContent = body.error || T.send_failed; error.hidden = false;
        if (resp.status === 410) window.location.reload();
      }
    } catch (err) {
      error.textContent = T.send_failed; error.hidden = false;
    } finally { button.disabled = false; button.textContent = T.send; }
  });
  const source = new EventSource(`${base}/events`);
  source.addEventListener("hello", () => { live.dataset.state = "live"; live.textContent = T.live; refresh(); });
  source.addEventListener("feedback", refresh);
  source.addEventListener("message", refresh);
  source.addEventListener("gone", () => { source.close(); window.location.reload(); });
  source.onerror = () => { live.dataset.state = "reconnecting"; live.textContent = T.reconnecting; };
})();
