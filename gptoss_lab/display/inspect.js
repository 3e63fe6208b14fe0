// The inspection view: the turn's tokens coloured by channel (special tokens visible), and for the
// selected token or span the experts each layer routed it to, with the expert load over the turn
// (per channel) and the attention sinks' share. Click a token to select it, shift-click for a span.

const CHANNELS = ["all", "analysis", "commentary", "final"];

function esc(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

function heat(v) {
  const a = Math.max(0, Math.min(1, v));
  return `rgba(214, 83, 36, ${(0.08 + 0.92 * a).toFixed(3)})`;
}

function grid(rows, rowLabel, colCount, colLabel) {
  const max = Math.max(1e-9, ...rows.flat());
  let html = `<table class="gi-grid"><tr><th></th>`;
  for (let c = 0; c < colCount; c++) html += `<th>${colLabel(c)}</th>`;
  html += "</tr>";
  rows.forEach((row, r) => {
    html += `<tr><th>${rowLabel(r)}</th>`;
    for (let c = 0; c < colCount; c++) {
      const v = row[c] || 0;
      html += `<td style="background:${v ? heat(v / max) : "transparent"}" title="${rowLabel(r)}, ${colLabel(c)}: ${Number(v).toFixed(3)}"></td>`;
    }
    html += "</tr>";
  });
  // the scale: what the lightest and the darkest cell mean
  const top = Number.isInteger(max) ? String(max) : max.toFixed(3);
  return html + `</table><div class="gi-legend"><span>0</span><span class="gi-scale"></span><span>${top}</span></div>`;
}

function render({ model, el }) {
  el.classList.add("gi-view");
  const data = model.get("_data");
  const tokens = data.tokens || [];
  const L = data.num_layers || 0;
  const E = data.num_experts || 0;
  el.innerHTML = `
    <div class="gi-tokens"></div>
    <div class="gi-info">Click a token for its details; shift-click to select a span.</div>
    <div class="gi-panes">
      <div class="gi-pane"><div class="gi-title">Experts of the selection (layer × expert)</div><div class="gi-sel"></div></div>
      <div class="gi-pane"><div class="gi-title">Expert load over the turn
        <select class="gi-channel">${CHANNELS.map((c) => `<option>${c}</option>`).join("")}</select></div><div class="gi-load"></div></div>
      <div class="gi-pane"><div class="gi-title">Attention sinks' share (layer × head)</div><div class="gi-sinks"></div></div>
    </div>`;
  const strip = el.querySelector(".gi-tokens");
  const info = el.querySelector(".gi-info");

  tokens.forEach((t, i) => {
    const span = document.createElement("span");
    span.className = `gi-tok gi-${t.special ? "special" : t.state === "header" ? "header" : t.channel || "none"}`;
    span.textContent = t.text;
    span.dataset.i = i;
    span.title = `#${i} id ${t.id}` + (t.logprob != null ? ` logprob ${t.logprob.toFixed(3)}` : "");
    strip.append(span);
  });

  strip.addEventListener("click", (ev) => {
    const i = Number(ev.target.dataset.i);
    if (Number.isNaN(i)) return;
    const [a] = model.get("selection") || [i, i];
    model.set("selection", ev.shiftKey ? [Math.min(a, i), Math.max(a, i)] : [i, i]);
    model.save_changes();
  });

  function routingOf(start, end) {
    const rows = Array.from({ length: L }, () => new Array(E).fill(0));
    let n = 0;
    for (let i = start; i <= end; i++) {
      const r = tokens[i] && tokens[i].routing;
      if (!r) continue;
      n++;
      r.forEach(([ids, w], layer) => ids.forEach((e, k) => { rows[layer][e] += w[k]; }));
    }
    return { rows: rows.map((row) => row.map((v) => (n ? v / n : 0))), n };
  }

  function drawSelection() {
    const [start, end] = model.get("selection") || [0, 0];
    strip.querySelectorAll(".gi-tok").forEach((s) => {
      const i = Number(s.dataset.i);
      s.classList.toggle("gi-selected", i >= start && i <= end);
    });
    const t = tokens[start];
    if (t && start === end) {
      const alts = (t.alternatives || []).map(([id, lp]) => `${esc(JSON.stringify(data.texts[id] ?? String(id)))} ${lp.toFixed(2)}`).join(", ");
      info.innerHTML = `<b>#${start}</b> ${esc(JSON.stringify(t.text))} — id ${t.id}, channel ${esc(t.channel || "-")}, parser ${esc(t.state)}` +
        (t.logprob != null ? `, logprob ${t.logprob.toFixed(3)} (p ${Math.exp(t.logprob).toFixed(3)})` : "") +
        (alts ? `<br>alternatives: ${alts}` : "") +
        (t.routing ? "" : "<br>no routing: this token was never fed to the model (the turn's last token)");
    } else if (t) {
      info.innerHTML = `<b>#${start}–#${end}</b>: ${end - start + 1} tokens`;
    }
    const { rows, n } = routingOf(start, end);
    el.querySelector(".gi-sel").innerHTML = n ? grid(rows, (r) => `L${r}`, E, (c) => c) : "<i>no routing recorded</i>";
    const sinks = t && t.sinks;
    el.querySelector(".gi-sinks").innerHTML = sinks ? grid(sinks, (r) => `L${r}`, sinks[0].length, (c) => `h${c}`)
      : `<i>${esc(data.sink_note || "no sinks for this token")}</i>`;
  }

  function drawLoad() {
    const channel = el.querySelector(".gi-channel").value;
    const rows = (data.load || {})[channel] || [];
    el.querySelector(".gi-load").innerHTML = rows.length ? grid(rows, (r) => `L${r}`, E, (c) => c) : "<i>no tokens on this channel</i>";
  }

  el.querySelector(".gi-channel").addEventListener("change", drawLoad);
  model.on("change:selection", drawSelection);
  drawSelection();
  drawLoad();
}

export default { render };
