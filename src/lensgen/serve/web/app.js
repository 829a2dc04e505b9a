// The lensgen page: reads /v1/models, posts to /v1/images/generations, shows each image with its settings.
"use strict";
const $ = (id) => document.getElementById(id);
let models = {};

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim() || sessionStorage.getItem("lensgen-key") || "";
  if (key) h.Authorization = "Bearer " + key;
  return h;
}

// Sizes for an aspect ratio: the model's default area scaled, sides multiples of its token size, within max_side.
function sizesFor(info, ratio) {
  const [dw, dh] = info.default_size.split("x").map(Number);
  const m = info.size_multiple || 8, out = [];
  for (const scale of [0.75, 1, 1.5, 2, 3]) {
    const base = Math.sqrt(dw * dh) * scale;
    const w = Math.max(m, Math.round(base * Math.sqrt(ratio) / m) * m);
    const h = Math.max(m, Math.round(base / Math.sqrt(ratio) / m) * m);
    const r = w / h;
    if (Math.max(w, h) <= info.max_side && r >= 0.5 && r <= 2 && !out.includes(`${w}x${h}`)) out.push(`${w}x${h}`);
  }
  return out;
}

function refreshSizes() {
  const info = models[$("model").value];
  if (!info) return;
  const sizes = sizesFor(info, Number($("aspect").value));
  const sel = $("size");
  sel.replaceChildren(...sizes.map((s) => new Option(s + (s === info.default_size ? " (default)" : ""), s)));
  const def = sizes.indexOf(info.default_size);
  sel.selectedIndex = def >= 0 ? def : Math.min(1, sizes.length - 1);
  $("steps").placeholder = info.steps;
  $("cfg").placeholder = info.cfg;
  $("classifier_scale").placeholder = info.classifier ? info.classifier_scale : "none";
  $("classifier_scale").disabled = !info.classifier;
}

async function loadModels() {
  const health = await (await fetch("/healthz")).json().catch(() => ({}));
  $("key-row").hidden = !health.auth;
  const res = await fetch("/v1/models", { headers: headers() });
  if (!res.ok) {
    $("server-status").textContent = res.status === 401 ? "enter the API key" : `server answered ${res.status}`;
    return;
  }
  const body = await res.json();
  models = Object.fromEntries(body.data.map((m) => [m.id, m.lensgen]));
  $("model").replaceChildren(...body.data.map((m) => new Option(m.id, m.id)));
  $("model").disabled = body.data.length < 2;
  const backends = body.reasoners.filter((r) => r !== "none");
  $("reasoner").replaceChildren(...backends.map((r) => new Option(r, r)));
  $("use-reasoner").checked = body.default_reasoner !== "none";
  $("server-status").textContent = `${body.data.length} model(s) ready`;
  refreshSizes();
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

function card(item, settings) {
  const div = document.createElement("div");
  div.className = "card";
  const img = new Image();
  img.src = "data:image/png;base64," + item.b64_json;
  img.alt = settings.prompt;
  const name = `lensgen-${item.seed}.png`;
  const link = Object.assign(document.createElement("a"), { href: img.src, download: name, textContent: "download" });
  const lines = [
    ["prompt", settings.prompt],
    ...(item.revised_prompt !== settings.prompt ? [["rewritten", item.revised_prompt]] : []),
    ["settings", `${settings.model}, ${settings.size}, ${settings.steps} steps, CFG ${settings.cfg}` +
      (settings.classifier_scale ? `, guidance ${settings.classifier_scale}` : "") + `, seed ${item.seed}`],
  ];
  div.append(img, ...lines.map(([k, v]) => {
    const p = document.createElement("p");
    p.append(Object.assign(document.createElement("strong"), { textContent: k + ": " }), v);
    return p;
  }), link);
  return div;
}

async function generate(event) {
  event.preventDefault();
  showError("");
  const body = { prompt: $("prompt").value, model: $("model").value, size: $("size").value, n: Number($("n").value) || 1,
                 response_format: "b64_json", reasoner: $("use-reasoner").checked ? $("reasoner").value || "none" : "none" };
  for (const f of ["steps", "cfg", "classifier_scale", "seed"]) if ($(f).value !== "" && !$(f).disabled) body[f] = Number($(f).value);
  if ($("api-key").value.trim()) sessionStorage.setItem("lensgen-key", $("api-key").value.trim());
  $("generate").disabled = true;
  $("progress").hidden = false;
  const start = performance.now();
  const tick = setInterval(() => {
    $("progress-text").textContent = `sampling… ${((performance.now() - start) / 1000).toFixed(1)} s`;
  }, 100);
  try {
    const res = await fetch("/v1/images/generations", { method: "POST", headers: headers(), body: JSON.stringify(body) });
    const reply = await res.json().catch(() => ({}));
    if (!res.ok) {
      const retry = res.headers.get("Retry-After");
      const message = (reply.error && reply.error.message) || `server answered ${res.status}`;
      showError(message + (retry && !message.includes("retry") ? ` (retry in ${retry} s)` : ""));
      return;
    }
    const settings = { prompt: body.prompt, model: reply.model, size: reply.size, steps: reply.lensgen.steps, cfg: reply.lensgen.cfg,
                       classifier_scale: reply.lensgen.classifier_scale };
    const rewritten = reply.data[0].revised_prompt;
    $("rewritten").hidden = rewritten === body.prompt;
    $("rewritten").querySelector("span").textContent = rewritten;
    if (reply.lensgen.reasoner_fallback) showError("reasoner: " + reply.lensgen.reasoner_fallback);
    for (const item of reply.data) $("gallery").prepend(card(item, settings));
  } catch (err) {
    showError("request failed: " + err);
  } finally {
    clearInterval(tick);
    $("progress").hidden = true;
    $("generate").disabled = false;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("model").addEventListener("change", refreshSizes);
  $("aspect").addEventListener("change", refreshSizes);
  $("api-key").addEventListener("change", loadModels);
  $("form").addEventListener("submit", generate);
  loadModels().catch((err) => { $("server-status").textContent = "cannot reach the server: " + err; });
});
