// The transcript JSON (application/vnd.gptoss-lab.transcript+json), as gptoss_lab/harmony/transcript.py
// and gptoss_lab/session/loop.py write it (DESIGN.md, "Transcript JSON"). Every field the renderer
// reads is here; anything else in the file is kept and ignored.

export const MIME_TYPE = 'application/vnd.gptoss-lab.transcript+json';

export interface IMessage {
  role: string; // lowercase Harmony role: user, assistant, tool, system, developer
  name: string | null; // the author's name (a tool's name for tool messages)
  channel: string | null; // analysis, commentary, final
  recipient: string | null; // python, functions.get_weather, browser.search, ...
  content_type: string | null; // e.g. "<|constrain|>json"
  content: string;
}

export interface IParseError {
  raw: string;
  reason: string;
  token_index?: number;
}

// One expert choice per layer: [expert ids, weights], most weight first.
export type LayerRouting = [number[], number[]];

export interface IToken {
  id: number;
  text: string;
  channel: string | null;
  state: string; // the parser's state when the token arrived: header, content, ...
  special: boolean;
  round: number;
  logprob: number | null;
  alternatives: [number, number][]; // (token id, logprob), most likely first
  routing: LayerRouting[] | null;
  sinks?: number[][] | null;
}

// A tool's rich output, a MIME bundle (image/png is base64).
export type IOutput = { [mime: string]: unknown };

export interface ITranscript {
  format: string; // "gptoss-lab.transcript/1"
  messages: IMessage[];
  complete: boolean;
  errors: IParseError[];
  stop_reason?: string;
  incomplete_messages?: number[];
  model?: string;
  engine?: string;
  reasoning?: string;
  seconds?: number;
  tool_outputs?: { [callIndex: string]: IOutput[] };
  tokens?: IToken[];
  num_experts?: number | null;
  inspect_notes?: string[];
  failure?: string;
}

// A transcript's messages in Harmony's own text, special tokens included: what the model read and wrote.
export function harmonyText(t: ITranscript): string {
  const last = t.messages.length - 1;
  return t.messages
    .map((m, i) => {
      const who = m.role === 'tool' ? m.name || 'tool' : m.role;
      const channel = m.channel ? `<|channel|>${m.channel}` : '';
      const to = m.recipient ? ` to=${m.recipient}` : '';
      const type = m.content_type ? ` ${m.content_type}` : '';
      let end = '<|end|>';
      if (m.role === 'assistant' && m.recipient) end = '<|call|>';
      else if (i === last && m.role === 'assistant' && m.channel === 'final' && t.complete) end = '<|return|>';
      return `<|start|>${who}${channel}${to}${type}<|message|>${m.content}${end}`;
    })
    .join('');
}

// How often each expert was chosen, per layer ([layer][expert]), over the tokens of one channel (or all).
export function expertLoad(tokens: IToken[], channel: string | null, width: number): number[][] {
  const load: number[][] = [];
  for (const tok of tokens) {
    if (!tok.routing || (channel !== null && tok.channel !== channel)) continue;
    tok.routing.forEach(([ids], layer) => {
      while (load.length <= layer) load.push([]);
      for (const e of ids) {
        while (load[layer].length <= e) load[layer].push(0);
        load[layer][e] += 1;
      }
    });
  }
  const w = Math.max(width, ...load.map(r => r.length));
  return load.map(r => r.concat(new Array(w - r.length).fill(0)));
}
