// Kiosk page: live status, capture, drag-to-crop, report, send to a doctor. No libraries, works offline.
"use strict";
const T = JSON.parse(document.getElementById("strings").textContent);
const LANG = document.documentElement.lang;
const $ = (id) => document.getElementById(id);
let current = null;   // {capture_id, width, height, report}
let box = null;       // crop rectangle in image pixels [x0, y0, x1, y1]
let pollTimer = null;

async function api(method, url, body) {
  const opts = { method, headers: {} };
  if (body instanceof FormData) opts.body = body;
  else if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify({ ...body, lang: LANG });
  }
  const sep = url.includes("?") ? "&" : "?";
  const resp = await fetch(`${url}${sep}lang=${LANG}`, opts);
  let data = {};
  try { data = await resp.json(); } catch (e) { data = { error: `HTTP ${resp.status}` }; }
  return { ok: resp.ok, status: resp.status, data };
}

function pill(el, ok, text) {
  el.classList.toggle("ok", ok);
  el.classList.toggle("bad", !ok);
  el.title = text;
}

async function refreshLive() {
  const { ok, data } = await api("GET", "/api/live").catch(() => ({ ok: false, data: {} }));
  if (!ok) return;
  pill($("camera-status"), data.camera.ok, data.camera.message);
  pill($("model-status"), data.model.ok, data.model.ok ? data.model.version : `${T.model_missing}: ${data.model.error}`);
  pill($("cloud-status"), !!data.cloud.connected, data.cloud.connected ? T.connected : T.offline);
  $("model-line").textContent = modelLine(data.model);
  const live = data.live;
  if (!data.camera.ok) {
    $("live-label").textContent = `${T.camera}: ${data.camera.message}`;
    $("live-info").textContent = "";
    $("live-warnings").replaceChildren();
  } else if (live) {
    $("live-label").textContent = `${live.unsure ? T.unsure : live.name} ${Math.round(live.confidence * 100)}%`;
    $("live-info").textContent = `${Math.round(live.ms)} ${T.ms} · ${data.stats.overlay_fps} fps · ${data.stats.classifications_per_s}/s`;
    $("live-warnings").replaceChildren(...live.warnings.map((w) => Object.assign(document.createElement("li"), { textContent: w })));
  } else if (!data.model.ok) {
    $("live-label").textContent = `${T.model}: ${T.model_missing}`;
  }
}

// "Model version: v2 · updated to v2" (or why the last over-the-air update was refused, or a rollback).
function modelLine(model) {
  if (!model.version) return "";
  const parts = [`${T.model_version}: ${model.version}`];
  const up = model.update;
  if (up && up.rollback) parts.push(`${T.rollback}: ${up.rollback}`);
  const last = up && up.last_update;
  if (last && last.outcome === "installed") parts.push(`${T.update_installed} ${last.version}`);
  else if (last && last.outcome === "unchanged") parts.push(T.update_unchanged);
  else if (last) parts.push(`${T[`update_${last.outcome}`]} (${last.version}): ${last.reason}`);
  return parts.join(" · ");
}

function showReport(r) {
  current.report = r;
  box = r.box.slice();
  const head = r.unsure ? T.urgency_unsure : `${r.name} — ${Math.round(r.confidence * 100)}%`;
  $("report-headline").textContent = head;
  $("report-headline").className = `big urgency-${r.urgency}`;
  $("report-advice").textContent = r.advice;
  $("report-quality").textContent = r.quality.length ? `${T.retake_advised}: ${r.quality.join("; ")}` : "";
  const rows = [];
  for (const row of r.top) {
    const tr = document.createElement("tr");
    tr.className = "top-row";
    tr.dataset.label = row.label;
    for (const [text, cls] of [[row.name, ""], [`${(row.probability * 100).toFixed(1)}%`, ""],
                               [row.urgency_text, `urgency-${row.urgency}`]]) {
      tr.appendChild(Object.assign(document.createElement("td"), { textContent: text, className: cls }));
    }
    const adv = document.createElement("tr");
    adv.appendChild(Object.assign(document.createElement("td"), { textContent: row.advice, className: "advice", colSpan: 3 }));
    rows.push(tr, adv);
  }
  $("report-top").tBodies[0].replaceChildren(...rows);
  $("print-link").href = r.report_url;
  $("report").hidden = false;
  drawBox();
}

function showStill(capture) {
  current = capture;
  $("live").hidden = true;
  $("live").src = "";  // stop pulling the MJPEG stream while the still is shown
  $("still-view").hidden = false;
  $("still").src = capture.image_url;
  $("live-panel").hidden = true;
  $("upload-state").textContent = T.state_not_sent;
  for (const id of ["cloud-result", "feedback", "pair"]) $(id).hidden = true;
  $("report-error").textContent = "";
}

async function doCapture(form) {
  $("capture-error").textContent = "";
  $("capture-btn").disabled = true;
  const { ok, data } = await api("POST", "/api/capture", form).finally(() => { $("capture-btn").disabled = false; });
  if (!ok) { $("capture-error").textContent = data.error || T.no_frame; return; }
  showStill(data);
  if (data.report) showReport(data.report);
  else $("report-error").textContent = data.error || "";
  $("report").hidden = false;
}

function retake() {
  current = null; box = null;
  clearInterval(pollTimer);
  $("report").hidden = true;
  $("still-view").hidden = true;
  $("live").src = "/stream.mjpg";
  $("live").hidden = false;
  $("live-panel").hidden = false;
  $("upload-input").value = "";
}

async function analyse(useBox) {
  $("report-error").textContent = T.analysing;
  const { ok, data } = await api("POST", `/api/captures/${current.capture_id}/diagnose`, { box: useBox ? box : null });
  $("report-error").textContent = ok ? "" : data.error;
  if (ok) showReport(data.report);
}

function showUpload(data) {
  const key = `state_${data.state}`;
  $("upload-state").textContent = T[key] || data.state;
  $("upload-state").dataset.state = data.state;
  if (data.state === "offline") $("report-error").textContent = T.not_connected;
  else if (data.error) $("report-error").textContent = data.error;
  if (data.result) {
    const r = data.result;
    $("cloud-result").textContent = `${T.cloud_result}: ${r.label} ${Math.round(r.confidence * 100)}%${r.unsure ? ` (${T.unsure})` : ""}`;
    $("cloud-result").hidden = false;
  }
  if (data.feedback) {
    const f = data.feedback;
    $("feedback-text").textContent = `${f.urgent ? `${T.urgent}: ` : ""}${f.label} — ${f.recommendation} (${f.doctor})`;
    $("feedback").hidden = false;
  }
  const sent = ["queued", "sent", "answered"].includes(data.state);
  if (sent) {
    $("pair-qr").src = `/captures/${current.capture_id}/pair.svg`;
    $("pair").hidden = false;
  }
  if (data.state === "answered" && data.feedback) clearInterval(pollTimer);
}

async function send() {
  $("send-btn").disabled = true;
  $("upload-state").textContent = T.sending;
  const { data } = await api("POST", `/api/captures/${current.capture_id}/send`, {});
  $("send-btn").disabled = false;
  showUpload(data);
  if (["queued", "sent"].includes(data.state)) {
    const id = current.capture_id;
    clearInterval(pollTimer);
    pollTimer = setInterval(async () => {
      if (!current || current.capture_id !== id) return clearInterval(pollTimer);
      const res = await api("GET", `/api/captures/${id}/status`);
      if (res.ok) showUpload(res.data);
    }, 2000);
  }
}

// -- drag-to-crop on a canvas laid over the still (pointer events: mouse and touch alike) --
const canvas = $("crop-canvas");
let dragStart = null;

function layout() {
  // The still is letterboxed inside its box (object-fit: contain): map between screen and image pixels.
  const img = $("still");
  const cw = img.clientWidth, ch = img.clientHeight;
  const scale = Math.min(cw / current.width, ch / current.height);
  return { scale, ox: (cw - current.width * scale) / 2, oy: (ch - current.height * scale) / 2, cw, ch };
}

function drawBox() {
  if (!current) return;
  const L = layout();
  canvas.width = L.cw; canvas.height = L.ch;
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, L.cw, L.ch);
  if (!box) return;
  const [x0, y0, x1, y1] = box.map((v, i) => v * L.scale + (i % 2 ? L.oy : L.ox));
  ctx.fillStyle = "rgba(0,0,0,0.45)";
  ctx.fillRect(0, 0, L.cw, L.ch);
  ctx.clearRect(x0, y0, x1 - x0, y1 - y0);
  ctx.strokeStyle = "#4fc3f7"; ctx.lineWidth = 2;
  ctx.strokeRect(x0, y0, x1 - x0, y1 - y0);
}

function toImage(ev) {
  const L = layout();
  const rect = canvas.getBoundingClientRect();
  const x = (ev.clientX - rect.left - L.ox) / L.scale, y = (ev.clientY - rect.top - L.oy) / L.scale;
  return [Math.max(0, Math.min(current.width, x)), Math.max(0, Math.min(current.height, y))];
}

canvas.addEventListener("pointerdown", (ev) => { if (current) { dragStart = toImage(ev); canvas.setPointerCapture(ev.pointerId); } });
canvas.addEventListener("pointermove", (ev) => {
  if (!dragStart) return;
  const [x, y] = toImage(ev);
  box = [Math.min(dragStart[0], x), Math.min(dragStart[1], y), Math.max(dragStart[0], x), Math.max(dragStart[1], y)].map(Math.round);
  drawBox();
});
canvas.addEventListener("pointerup", () => { dragStart = null; });
$("still").addEventListener("load", drawBox);
window.addEventListener("resize", drawBox);

$("capture-btn").addEventListener("click", () => doCapture());
$("upload-input").addEventListener("change", (ev) => {
  if (!ev.target.files.length) return;
  const form = new FormData();
  form.append("image", ev.target.files[0]);
  doCapture(form);
});
$("retake-btn").addEventListener("click", retake);
$("analyse-btn").addEventListener("click", () => analyse(true));
$("auto-btn").addEventListener("click", () => analyse(false));
$("send-btn").addEventListener("click", send);
refreshLive();
setInterval(refreshLive, 1000);
