// Baton console: buttons that call the /v1 API with the session cookie, local times, live instance pages.
// Plain JavaScript, no build step.
"use strict";

function say(text, ok) {
  const m = document.getElementById("message");
  if (!m) return;
  m.textContent = text;
  m.className = ok ? "ok" : "problem";
}

async function call(url, body) {
  const response = await fetch(url, {
    method: "POST",
    credentials: "same-origin",
    headers: { "Content-Type": "application/json", "Accept": "application/json" },
    body: JSON.stringify(body),
  });
  let answer = null;
  try { answer = await response.json(); } catch (_) { /* an empty answer */ }
  if (!response.ok) {
    throw new Error((answer && (answer.detail || answer.title)) || ("HTTP " + response.status));
  }
  return { status: response.status, answer };
}

function summarize(result) {
  if (result.answer && Array.isArray(result.answer.results)) {
    const by = {};
    for (const r of result.answer.results) by[r.outcome] = (by[r.outcome] || 0) + 1;
    return Object.entries(by).map(([k, v]) => v + " " + k).join(", ");
  }
  return result.status === 202 ? "Sent; waiting for the engine to apply it." : "Done.";
}

document.addEventListener("click", async (event) => {
  const button = event.target.closest("button.action");
  if (button) {
    event.preventDefault();
    let body = JSON.parse(button.dataset.body || "{}");
    if (button.dataset.bulk) {
      body.ids = Array.from(document.querySelectorAll("input.pick:checked")).map((c) => c.value);
      if (body.ids.length === 0) { say("Select some instances first.", false); return; }
    }
    button.disabled = true;
    try {
      const result = await call(button.dataset.url, body);
      say(summarize(result), true);
      setTimeout(() => location.reload(), 400);
    } catch (error) {
      say(error.message, false);
      button.disabled = false;
    }
    return;
  }
  const decide = event.target.closest("form.decide button");
  if (decide) {
    event.preventDefault();
    const form = decide.closest("form");
    const comment = form.querySelector("textarea[name=comment]").value.trim();
    const body = { approved: decide.dataset.approved === "true" };
    if (comment) body.comment = comment;
    form.querySelectorAll("button").forEach((b) => (b.disabled = true));
    try {
      await call(form.dataset.url, body);
      say(body.approved ? "Approved." : "Rejected.", true);
      setTimeout(() => location.reload(), 300);
    } catch (error) {
      say(error.message, false);
      form.querySelectorAll("button").forEach((b) => (b.disabled = false));
    }
  }
});

function localTimes() {
  const now = Date.now();
  for (const t of document.querySelectorAll("time[data-ms]")) {
    const ms = Number(t.dataset.ms);
    let text = new Date(ms).toLocaleString();
    if (t.classList.contains("due")) {
      const hours = Math.round((ms - now) / 3600000);
      text += hours >= 0 ? " (in " + hours + " h)" : " (overdue)";
      if (hours < 0) t.classList.add("overdue");
    }
    t.textContent = text;
    t.title = t.getAttribute("datetime");
  }
}

function live() {
  const holder = document.querySelector("[data-live]");
  if (!holder || !window.EventSource) return;
  const source = new EventSource(holder.dataset.live);
  const shown = holder.dataset.updated; // the change the page shows
  let pending = null;
  source.addEventListener("instance", (event) => {
    let updated = null;
    try { updated = String(JSON.parse(event.data).updated_at); } catch (_) { /* not JSON: reload */ }
    if (updated !== null && updated === shown) return; // the state the page already shows
    clearTimeout(pending);
    pending = setTimeout(() => location.reload(), 250);
  });
  // Leaving the page closes the stream (browsers allow a few connections per server).
  window.addEventListener("pagehide", () => source.close());
}

document.addEventListener("DOMContentLoaded", () => { localTimes(); live(); });
