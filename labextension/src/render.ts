// The DOM of a saved turn: header, messages by channel (analysis collapsed), tool calls and outputs,
// the final answer from Markdown, the parser's errors, the Harmony text with special tokens on request,
// and, when the turn was recorded with inspect=True, the token strip and the expert heat map.
// Everything runs in the page: no kernel, no widget manager.

import { expertLoad, harmonyText, IMessage, IOutput, IToken, ITranscript } from './transcript';

export type Markdown = (text: string) => Promise<string>;

function el<K extends keyof HTMLElementTagNameMap>(tag: K, cls = '', text = ''): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text) node.textContent = text;
  return node;
}

function kind(m: IMessage): string {
  if (m.role === 'tool') return 'tool';
  if (m.role !== 'assistant') return 'user';
  if (m.recipient) return 'call';
  return m.channel || 'final';
}

// Roles, channels and recipients in their own case.
export function label(m: IMessage): string {
  if (m.role === 'tool') return `${m.name || 'tool'} returned`;
  if (m.role !== 'assistant') return m.role;
  const channel = m.channel || 'message';
  if (m.recipient) return `${channel} → ${m.recipient}`;
  if (channel === 'analysis') return 'analysis: raw, unfiltered chain of thought';
  return channel;
}

function outputs(list: IOutput[]): HTMLElement[] {
  const out: HTMLElement[] = [];
  for (const o of list) {
    const png = o['image/png'];
    if (typeof png === 'string' && /^[A-Za-z0-9+/=\s]*$/.test(png)) {
      const img = el('img', 'gls-img');
      img.alt = 'an image the tool made';
      img.src = `data:image/png;base64,${png.replace(/\s/g, '')}`;
      out.push(img);
    } else if (typeof o['text/plain'] === 'string' && !o['text/html']) {
      out.push(el('pre', 'gls-content', o['text/plain'] as string));
    }
  }
  return out;
}

function message(m: IMessage, index: number, t: ITranscript, md: Markdown, open: boolean): HTMLElement {
  const k = kind(m);
  const box = k === 'analysis' ? el('details') : el('div');
  if (box instanceof HTMLDetailsElement) box.open = open;
  box.className = `gls-msg gls-${k}`;
  const head = el(k === 'analysis' ? 'summary' : 'div', 'gls-label', label(m));
  if (m.content_type) head.append(' ', el('code', 'gls-ct', m.content_type));
  if ((t.incomplete_messages || []).includes(index)) head.append(' ', el('i', '', '(cut off)'));
  box.append(head);
  if (k === 'final') {
    const body = el('div', 'gls-final-body');
    body.textContent = m.content; // until the Markdown is rendered
    md(m.content).then(html => (body.innerHTML = html)).catch(() => undefined);
    box.append(body);
  } else {
    box.append(el('pre', 'gls-content', m.content));
  }
  if (m.role === 'tool') box.append(...outputs((t.tool_outputs || {})[String(index - 1)] || []));
  return box;
}

function tokenView(t: ITranscript, tokens: IToken[]): HTMLElement {
  const view = el('div', 'gls-inspect');
  const bar = el('div', 'gls-bar');
  const strip = el('div', 'gls-strip');
  const detail = el('div', 'gls-detail', 'Click a token: its id, channel, logprob, alternatives and experts.');
  const heat = el('div', 'gls-heat');
  let channel: string | null = null;
  for (const c of ['all', 'analysis', 'commentary', 'final']) {
    const b = el('button', 'gls-button', c);
    b.dataset.channel = c;
    b.onclick = () => {
      channel = c === 'all' ? null : c;
      bar.querySelectorAll('button').forEach(x => x.classList.toggle('gls-on', x === b));
      draw();
    };
    if (c === 'all') b.classList.add('gls-on');
    bar.append(b);
  }
  function show(tok: IToken, i: number): void {
    detail.textContent = '';
    const lp = tok.logprob === null ? 'not recorded' : tok.logprob.toFixed(3);
    detail.append(el('div', '', `token #${i}: id ${tok.id} ${JSON.stringify(tok.text)}, channel ${tok.channel}, parser ${tok.state}, logprob ${lp}`));
    if (tok.alternatives.length) {
      detail.append(el('div', '', 'alternatives (id: logprob): ' + tok.alternatives.map(([id, p]) => `${id}: ${p.toFixed(3)}`).join(', ')));
    }
    if (tok.routing) {
      const table = el('table', 'gls-routing');
      table.append(el('caption', '', 'experts this token was routed to, per layer (weight)'));
      tok.routing.forEach(([ids, w], layer) => {
        const row = el('tr');
        row.append(el('th', '', `layer ${layer}`), el('td', '', ids.map((e, j) => `${e} (${w[j].toFixed(2)})`).join(', ')));
        table.append(row);
      });
      detail.append(table);
    } else {
      detail.append(el('div', '', 'no routing for this token (the last token is never fed to the model)'));
    }
  }
  let anchor: number | null = null;
  // A span (shift-click): how many tokens, their summed logprob, and each layer's most used expert.
  function span_(a: number, b: number): void {
    const picked = tokens.slice(a, b + 1);
    const known = picked.filter(x => x.logprob !== null);
    const sum = known.reduce((acc, x) => acc + (x.logprob as number), 0);
    detail.textContent = '';
    detail.append(el('div', '', `${picked.length} tokens selected (#${a} to #${b}); summed logprob ${known.length ? sum.toFixed(3) : 'not recorded'}`));
    const load = expertLoad(picked, null, t.num_experts || 0);
    if (load.length) {
      const table = el('table', 'gls-routing');
      table.append(el('caption', '', 'the most used expert in each layer over the span (tokens routed to it)'));
      load.forEach((row, layer) => {
        const top = row.indexOf(Math.max(...row));
        const tr = el('tr');
        tr.append(el('th', '', `layer ${layer}`), el('td', '', `expert ${top} (${row[top]} of ${picked.length})`));
        table.append(tr);
      });
      detail.append(table);
    }
  }
  function draw(): void {
    strip.textContent = '';
    tokens.forEach((tok, i) => {
      if (channel !== null && tok.channel !== channel) return;
      const span = el('span', `gls-tok gls-tok-${tok.special ? 'special' : tok.channel || 'none'}`, tok.text);
      span.dataset.index = String(i);
      span.onclick = (ev: MouseEvent) => {
        strip.querySelectorAll('.gls-sel').forEach(x => x.classList.remove('gls-sel'));
        if (ev.shiftKey && anchor !== null) {
          const [a, b] = [Math.min(anchor, i), Math.max(anchor, i)];
          strip.querySelectorAll<HTMLElement>('.gls-tok').forEach(x => {
            const j = Number(x.dataset.index);
            if (j >= a && j <= b) x.classList.add('gls-sel');
          });
          span_(a, b);
        } else {
          anchor = i;
          span.classList.add('gls-sel');
          show(tok, i);
        }
      };
      strip.append(span);
    });
    heat.textContent = '';
    const load = expertLoad(tokens, channel, t.num_experts || 0);
    if (!load.length) {
      heat.append(el('div', '', (t.inspect_notes || []).join('; ') || 'no expert routing was recorded'));
      return;
    }
    const peak = Math.max(1, ...load.flat());
    const table = el('table', 'gls-map');
    table.append(el('caption', '', `expert load, ${channel || 'all channels'}: tokens routed to each expert (columns) in each layer (rows)`));
    load.forEach((row, layer) => {
      const tr = el('tr');
      tr.append(el('th', '', `L${layer}`));
      row.forEach((v, e) => {
        const td = el('td');
        td.style.background = v ? `rgba(214,83,36,${(0.08 + 0.92 * v / peak).toFixed(3)})` : '';
        td.title = `layer ${layer}, expert ${e}: ${v} tokens`;
        tr.append(td);
      });
      table.append(tr);
    });
    const legend = el('div', 'gls-legend');
    legend.append(el('span', '', '0'), el('span', 'gls-scale'), el('span', '', `${peak} tokens`));
    heat.append(table, legend);
  }
  draw();
  view.append(bar, strip, detail, heat);
  return view;
}

// ``open``: the analyses the user had open in the live panel, counted over the assistant's and the
// tools' messages (the ones the panel shows), as the output's metadata says.
export function renderTranscript(host: HTMLElement, t: ITranscript, md: Markdown, open: number[] = []): void {
  host.textContent = '';
  host.classList.add('gls');
  const head = el('div', 'gls-head');
  for (const [name, value] of [['model', t.model], ['engine', t.engine], ['reasoning effort', t.reasoning],
                               ['ended by', t.stop_reason], ['seconds', t.seconds]] as [string, unknown][]) {
    if (value === undefined || value === null || value === '') continue;
    const chip = el('span', 'gls-chip');
    chip.append(el('b', '', name), ` ${value}`);
    head.append(chip);
  }
  const toggle = el('button', 'gls-button gls-special', 'show special tokens');
  head.append(toggle);
  const body = el('div', 'gls-body');
  let written = 0;
  t.messages.forEach((m, i) => {
    body.append(message(m, i, t, md, open.includes(written)));
    if (kind(m) !== 'user') written += 1;
  });
  for (const e of t.errors || []) {
    const box = el('div', 'gls-msg gls-error');
    const where = e.token_index !== undefined ? ` at token ${e.token_index}` : '';
    box.append(el('div', 'gls-label', `recovered malformed output${where}: ${e.reason}`), el('pre', 'gls-content', e.raw));
    body.append(box);
  }
  if (t.failure) body.append(el('div', 'gls-msg gls-error', `failed: ${t.failure}`));
  const raw = el('pre', 'gls-harmony', harmonyText(t));
  raw.style.display = 'none';
  toggle.onclick = () => {
    const special = raw.style.display === 'none';
    raw.style.display = special ? '' : 'none';
    body.style.display = special ? 'none' : '';
    toggle.textContent = special ? 'show channels' : 'show special tokens';
  };
  host.append(head, body, raw);
  if (t.tokens && t.tokens.length) host.append(tokenView(t, t.tokens));
}
