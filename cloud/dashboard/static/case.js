// Case view: zoom/pan on the photo, and the chat with the patient live (server-sent events).
"use strict";
(function () {
  const csrf = document.body.dataset.csrf;
  // -- zoom and pan -----------------------------------------------------------------------
  const frame = document.getElementById("zoom-frame");
  const img = document.getElementById("case-image");
  let scale = 1, x = 0, y = 0, drag = null;
  function apply() { img.style.transform = `translate(${x}px, ${y}px) scale(${scale})`; }
  function fit() {
    if (!img.naturalWidth) return;
    scale = Math.min(frame.clientWidth / img.naturalWidth, frame.clientHeight / img.naturalHeight);
    x = (frame.clientWidth - img.naturalWidth * scale) / 2;
    y = (frame.clientHeight - img.naturalHeight * scale) / 2;
    apply();
  }
  function zoomAt(factor, cx, cy) {
    const next = Math.min(20, Math.max(0.05, scale * factor));
    x = cx - (cx - x) * (next / scale);
    y = cy - (cy - y) * (next / scale);
    scale = next;
    apply();
  }
  if (img.complete) fit(); else img.addEventListener("load", fit);
  frame.addEventListener("wheel", (e) => {
    e.preventDefault();
    const r = frame.getBoundingClientRect();
    zoomAt(e.deltaY < 0 ? 1.2 : 1 / 1.2, e.clientX - r.left, e.clientY - r.top);
  }, { passive: false });
  frame.addEventListener("pointerdown", (e) => { drag = { px: e.clientX, py: e.clientY, x, y }; frame.setPointerCapture(e.pointerId); });
  frame.addEventListener("pointermove", (e) => { if (drag) { x = drag.x + e.clientX - drag.px; y = drag.y + e.clientY - drag.py; apply(); } });
  frame.addEventListener("pointerup", () => { drag = null; });
  const centre = () => [frame.clientWidth / 2, frame.clientHeight / 2];
  document.getElementById("zoom-in").addEventListener("click", () => zoomAt(1.5, ...centre()));
  document.getElementById("zoom-out").addEventListener("click", () => zoomAt(1 / 1.5, ...centre()));
  document.getElementById("zoom-reset").addEventListener("click", () => { scale = 1; x = 0; y = 0; apply(); });

  // -- chat -----------------------------------------------------------------------------------
  const chat = document.getElementById("chat");
  const id = chat.dataset.case;
  const log = document.getElementById("chat-log");
  function renderMessages(messages) {
    log.replaceChildren();
    if (!messages.length) { const li = document.createElement("li"); li.className = "hint empty"; li.textContent = "No messages."; log.append(li); }
    for (const m of messages) {
      const li = document.createElement("li");
      li.className = `msg ${m.sender}`;
      const who = document.createElement("span"); who.className = "who"; who.textContent = m.sender === "patient" ? "Patient" : m.author;
      const t = document.createElement("time"); t.textContent = new Date(m.sent_at).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
      li.append(who, ` ${m.text} `, t);
      log.append(li);
    }
  }
  async function refresh() {
    const resp = await fetch(`/api/cases/${id}`, { headers: { Accept: "application/json" } });
    if (resp.ok) renderMessages((await resp.json()).messages);
  }
  document.getElementById("reply-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const text = document.getElementById("reply-text");
    const resp = await fetch(`/cases/${id}/messages`, {
      method: "POST", headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf, Accept: "application/json" },
      body: JSON.stringify({ text: text.value }) });
    if (resp.ok) { text.value = ""; refresh(); }
  });
  const source = new EventSource(`/events?case=${encodeURIComponent(id)}`);
  source.addEventListener("message", refresh);
  source.addEventListener("hello", refresh);
})();
