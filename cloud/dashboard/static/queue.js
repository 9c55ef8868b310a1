// Triage queue: rendered from JSON, refreshed when the server-sent event stream says a case
// arrived or changed (no page reload). A reconnect also refreshes, so nothing missed stays hidden.
"use strict";
(function () {
  const body = document.getElementById("queue-body");
  const empty = document.getElementById("queue-empty");
  const live = document.getElementById("live-state");
  const initial = JSON.parse(document.getElementById("queue-data").textContent);
  const shown = new Set();
  let first = true;

  function pct(x) { return `${Math.round(x * 100)}%`; }
  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(c ?? ""));
    return e;
  }
  function prediction(p) {
    if (!p) return el("span", { class: "hint" }, "—");
    const top = p.top.map(([label, prob]) => `${label} ${pct(prob)}`).join(", ");
    return el("div", {}, el("strong", {}, p.label), ` ${pct(p.confidence)}`,
      p.unsure ? el("span", { class: "flag unsure" }, "unsure") : "", el("div", { class: "small" }, top));
  }
  function render(rows) {
    body.replaceChildren();
    for (const r of rows) {
      const flags = el("td", {});
      for (const f of ["dangerous", "unsure", "disagree", "urgent"]) if (r.flags[f]) flags.append(el("span", { class: `flag ${f}` }, f));
      if (r.flags.pending) flags.append(el("span", { class: "flag" }, "cloud pending"));
      const review = r.review ? el("span", {}, el("span", { class: "flag reviewed" }, "reviewed"), `${r.review.label} (${r.review.doctor})`) : el("span", { class: "hint" }, "open");
      const tr = el("tr", { "data-id": r.capture_id, "data-rank": r.rank, class: "case-row" },
        el("td", {}, el("img", { src: `/cases/${r.capture_id}/thumb`, alt: "", loading: "lazy" })),
        el("td", {}, r.device_id),
        el("td", {}, new Date(r.received_at).toLocaleString()),
        el("td", { class: "device-pred" }, prediction(r.device)),
        el("td", { class: "cloud-pred" }, prediction(r.cloud)),
        flags, el("td", {}, review));
      if (!first && !shown.has(r.capture_id)) tr.classList.add("new");
      tr.addEventListener("click", () => { window.location.href = `/cases/${r.capture_id}`; });
      body.append(tr);
      shown.add(r.capture_id);
    }
    empty.hidden = rows.length > 0;
    first = false;
  }
  async function refresh() {
    const resp = await fetch(`/api/queue${window.location.search}`, { headers: { Accept: "application/json" } });
    if (resp.redirected || resp.status === 401) { window.location.reload(); return; }  // session ended
    if (resp.ok) render((await resp.json()).rows);
  }
  render(initial.rows);
  const source = new EventSource("/events");
  source.addEventListener("hello", () => { live.dataset.state = "live"; live.textContent = "live"; refresh(); });
  for (const kind of ["case", "feedback"]) source.addEventListener(kind, refresh);
  source.onerror = () => { live.dataset.state = "reconnecting"; live.textContent = "reconnecting…"; };
})();
