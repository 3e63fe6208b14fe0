// The live Harmony panel. State (finished messages, header) comes in traits; live text comes in
// custom messages, batched by the kernel (~20 a second at most). A view opened later rebuilds from
// the traits and asks the kernel for what is in flight.

function esc(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

// A small Markdown renderer for the final answer: text is escaped first, so nothing the model wrote
// can inject markup.
function markdown(src) {
  // Fences start a line: the text alternates prose, code, prose, ...
  const blocks = String(src).split(/^```/m);
  let html = "";
  blocks.forEach((block, i) => {
    if (i % 2 === 1) {
      const nl = block.indexOf("\n");
      const code = nl < 0 ? "" : block.slice(nl + 1);
      html += `<pre class="gl-code"><code>${esc(code.replace(/\n$/, ""))}</code></pre>`;
      return;
    }
    const text = i > 0 ? block.replace(/^[^\n]*\n?/, "") : block; // the rest of a closing fence's line
    for (const para of text.split(/\n{2,}/)) {
      if (!para.trim()) continue;
      const lines = para.split("\n");
      if (lines.every((l) => /^\s*([-*]|\d+\.)\s+/.test(l))) {
        const tag = /^\s*\d+\./.test(lines[0]) ? "ol" : "ul";
        html += `<${tag}>` + lines.map((l) => `<li>${inline(l.replace(/^\s*([-*]|\d+\.)\s+/, ""))}</li>`).join("") + `</${tag}>`;
      } else if (/^#{1,6}\s/.test(para)) {
        const level = para.match(/^#+/)[0].length;
        const h = Math.min(level + 2, 6);
        html += `<h${h}>${inline(para.replace(/^#+\s/, ""))}</h${h}>`;
      } else {
        html += `<p>${lines.map(inline).join("<br>")}</p>`;
      }
    }
  });
  return html;
}

function inline(s) {
  return esc(s)
    .replace(/`([^`]+)`/g, "<code>$1</code>")
    .replace(/\*\*([^*]+)\*\*/g, "<strong>$1</strong>")
    .replace(/(^|[^*])\*([^*]+)\*/g, "$1<em>$2</em>")
    .replace(/\[([^\]]+)\]\((https?:[^)\s]+)\)/g, '<a href="$2" target="_blank" rel="noopener noreferrer">$1</a>');
}

// Roles, channels and recipients in their own case (functions.get_weather, not FUNCTIONS.GET_WEATHER).
function label(m) {
  if (m.role === "tool") return `${m.name} returned`;
  if (m.role === "user") return "user";
  if (m.recipient) return `${m.channel || "message"} → ${m.recipient}`;
  if (m.channel === "analysis") return "analysis: raw, unfiltered chain of thought";
  return m.channel || m.role;
}

function labelHtml(m) {
  const ct = m.content_type ? ` <code class="gl-ct">${esc(m.content_type)}</code>` : "";
  return esc(label(m)) + ct + (m.incomplete ? " <i>(cut off)</i>" : "");
}

function kind(m) {
  if (m.role === "tool") return "tool";
  if (m.role === "user") return "user";
  if (m.recipient) return "call";
  return m.channel || "none";
}

function outputsHtml(outputs) {
  let html = "";
  for (const o of outputs || []) {
    // Only real base64 goes into the attribute: a tool's "image" could otherwise carry markup.
    const png = o["image/png"];
    if (typeof png === "string" && /^[A-Za-z0-9+/=\s]*$/.test(png)) html += `<img class="gl-img" src="data:image/png;base64,${esc(png)}">`;
    else if (o["text/html"]) html += `<iframe class="gl-html" sandbox="" srcdoc="${esc(o["text/html"])}"></iframe>`;
  }
  return html;
}

function renderBody(el, m) {
  if (m.channel === "final" && m.role === "assistant" && !m.recipient) el.innerHTML = markdown(m.content);
  else el.textContent = m.content;
}

function render({ model, el }) {
  el.classList.add("gl-panel");
  const header = document.createElement("div");
  header.className = "gl-header";
  const body = document.createElement("div");
  body.className = "gl-body";
  el.append(header, body);
  const live = new Map(); // index -> {box, text, message}

  // The header is built once and updated in place: a Stop button that was re-created on every
  // update could lose the click that lands while it is replaced.
  const parts = {};
  for (const [key, cls] of [["model", "gl-model"], ["moe", "gl-chip"], ["effort", "gl-chip"], ["returns", "gl-chip"], ["speed", "gl-chip"],
                            ["counts", "gl-counts"], ["status", "gl-status"]]) {
    parts[key] = document.createElement("span");
    parts[key].className = cls;
    header.append(parts[key]);
  }
  const stop = document.createElement("button");
  stop.className = "gl-stop";
  stop.textContent = "Stop";
  stop.onclick = () => { model.send({ type: "stop" }); stop.disabled = true; stop.textContent = "Stopping…"; };
  header.append(stop);

  function drawHeader() {
    const h = model.get("header") || {};
    const counts = Object.entries(h.counts || {}).map(([k, v]) => `${k} ${v}`).join(" · ");
    parts.model.textContent = h.model || "";
    parts.moe.textContent = h.moe_path || "";
    parts.effort.textContent = h.effort ? `effort ${h.effort}` : "";
    parts.returns.textContent = h.returns ? `returns ${h.returns}` : "";
    parts.speed.textContent = h.tokens_per_s ? `${Number(h.tokens_per_s).toFixed(1)} tok/s` : "";
    parts.counts.textContent = counts;
    parts.status.textContent = h.status || "";
    parts.status.className = `gl-status gl-${h.status || ""}`;
    for (const key of ["effort", "returns", "speed"]) parts[key].style.display = parts[key].textContent ? "" : "none";
    stop.style.display = h.status === "running" || h.status === "stopping" ? "" : "none";
  }

  const opened = new Set(); // ids of the analyses the user opened: they stay open while they stream and after

  function box(m, id) {
    const k = kind(m);
    let wrap, head;
    if (k === "analysis") {
      wrap = document.createElement("details");
      head = document.createElement("summary");
      wrap.open = opened.has(id);
      wrap.addEventListener("toggle", () => {
        if (wrap.open === opened.has(id)) return;
        if (wrap.open) opened.add(id); else opened.delete(id);
        model.send({ type: "open", id, open: wrap.open });
      });
    } else {
      wrap = document.createElement("div");
      head = document.createElement("div");
      head.className = "gl-label";
    }
    wrap.append(head);
    wrap.classList.add("gl-msg", `gl-${k}`);
    const content = document.createElement(k === "final" ? "div" : "pre");
    content.className = "gl-content";
    wrap.append(content);
    const b = { wrap, head, content };
    fill(b, m);
    return b;
  }

  // A message's label, text, outputs and error, written into its box (the box itself stays, and with it
  // whatever the user opened).
  function fill(b, m) {
    b.head.innerHTML = labelHtml(m);
    renderBody(b.content, m);
    for (const old of b.wrap.querySelectorAll(":scope > .gl-img, :scope > .gl-html, :scope > .gl-error")) old.remove();
    if (m.outputs) b.wrap.insertAdjacentHTML("beforeend", outputsHtml(m.outputs));
    if (m.error) b.wrap.insertAdjacentHTML("beforeend", `<div class="gl-error">${esc(m.error)}</div>`);
  }

  function drawMessages() {
    body.innerHTML = "";
    live.clear();
    for (const m of model.get("messages") || []) body.append(box(m, m.id).wrap);
    for (const e of model.get("errors") || []) {
      body.insertAdjacentHTML("beforeend", `<div class="gl-msg gl-malformed"><div class="gl-label">recovered malformed output: ${esc(e.reason)}</div><pre class="gl-content">${esc(e.raw)}</pre></div>`);
    }
  }

  function apply(ev) {
    const [type, index, payload] = ev;
    if (type === "start") {
      const m = { ...payload, content: "" };
      const b = box(m, index);
      body.append(b.wrap);
      live.set(index, { ...b, message: m });
    } else if (type === "delta") {
      const l = live.get(index);
      if (!l) return;
      l.message.content += payload;
      if (kind(l.message) === "final") renderBody(l.content, l.message);
      else l.content.append(document.createTextNode(payload));
    } else if (type === "done") {
      const l = live.get(index);
      // The kernel sends the text only once, as deltas; a "done" carries the rest of the message.
      const m = { content: l ? l.message.content : "", ...payload };
      if (l && kind(l.message) === kind(m)) fill(l, m); // in place: an open analysis stays open
      else if (l) l.wrap.replaceWith(box(m, index).wrap);
      else body.append(box(m, index).wrap);
      live.delete(index);
    } else if (type === "tool" || type === "error") {
      body.append(box(payload, index).wrap);
    }
  }

  model.on("msg:custom", (msg) => {
    if (msg.type === "batch") for (const ev of msg.events) apply(ev);
    else if (msg.type === "state") { drawMessages(); for (const ev of msg.events) apply(ev); }
  });
  model.on("change:header", drawHeader);
  model.on("change:messages", drawMessages);
  model.on("change:errors", drawMessages);
  drawHeader();
  drawMessages();
  if ((model.get("header") || {}).status === "running") model.send({ type: "sync" });
}

export default { render };
