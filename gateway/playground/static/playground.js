// promptwire playground: builds a POST /v1/compress request from the form, shows the result with kept and
// dropped words highlighted, and the same request as curl / OpenAI SDK code. No framework, no build step.
"use strict";

const SAMPLE_TEXT = [
  "Good evening everyone, and thank you for coming to tonight's council meeting.",
  "The first item on the agenda is the water budget for 2025, which staff recommend we approve as presented.",
  "The library report shows 3,400 new members this year; see https://example.com/library for details.",
  "Please keep `user_id` and getUserName() exactly as they are.",
].join("\n");
const SAMPLE_MESSAGES = JSON.stringify([
  {role: "system", content: "You are a helpful assistant for the city council. Answer briefly and cite the agenda item."},
  {role: "user", content: SAMPLE_TEXT},
  {role: "assistant", content: "Understood."},
  {role: "user", content: "What does staff recommend for the water budget?"},
], null, 2);

const $ = (id) => document.getElementById(id);
const picked = (name) => document.querySelector(`input[name="${name}"]:checked`).value;
let lastBody = null;
let modelName = "tiny-llama";

function options() {
  const opts = {};
  if (picked("budget") === "rate") opts.rate = Number($("rate").value);
  else opts.target_token = Number($("target").value);
  const prot = {};
  document.querySelectorAll('input[name="protection"]').forEach((c) => { prot[c.value] = c.checked; });
  opts.protections = prot;
  const force = $("force").value.split(",").map((s) => s.trim()).filter(Boolean);
  if (force.length) opts.force_tokens = force;
  if ($("compat").value !== "none") opts.compat = $("compat").value;
  return opts;
}

// The request body, or an Error whose message says what is wrong with the input.
function buildBody() {
  const body = options();
  const raw = $("input").value;
  if (picked("kind") === "text") {
    body.text = raw;
    body.return_word_labels = true;
    return body;
  }
  let messages;
  try {
    messages = JSON.parse(raw);
  } catch (e) {
    throw new Error(`messages: not valid JSON (${e.message})`);
  }
  if (!Array.isArray(messages)) throw new Error('messages: expected a JSON list like [{"role": "user", "content": "..."}]');
  body.messages = messages;
  return body;
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = false;
}

function authHeaders() {
  const key = $("key").value.trim();
  return key ? {Authorization: `Bearer ${key}`} : {};
}

async function run() {
  $("error").hidden = true;
  let body;
  try {
    body = buildBody();
  } catch (e) {
    showError(e.message);
    return;
  }
  lastBody = body;
  renderCode();
  $("run").disabled = true;
  const t0 = performance.now();
  try {
    const resp = await fetch("/v1/compress", {
      method: "POST",
      headers: {"Content-Type": "application/json", ...authHeaders()},
      body: JSON.stringify(body),
    });
    const ms = performance.now() - t0;
    let data = null;
    try { data = await resp.json(); } catch (e) { data = null; }
    if (!resp.ok) {
      const err = (data && data.error) || {};
      const param = err.param ? ` (parameter: ${err.param})` : "";
      showError(`Error ${resp.status}: ${err.message || resp.statusText}${param}`);
      return;
    }
    showResult(body, data, ms);
  } catch (e) {
    showError(`Could not reach the server: ${e.message}`);
  } finally {
    $("run").disabled = false;
  }
}

function showResult(body, data, ms) {
  $("stats").hidden = false;
  $("tokens-before").textContent = data.origin_tokens;
  $("tokens-after").textContent = data.compressed_tokens;
  $("ratio").textContent = data.compressed_tokens ? `${(data.origin_tokens / data.compressed_tokens).toFixed(2)}x` : "-";
  $("latency").textContent = `${ms.toFixed(0)} ms (server ${Number(data.ms).toFixed(1)} ms)`;
  const out = $("highlight");
  out.textContent = "";
  if (body.messages) {
    $("compressed").textContent = JSON.stringify(data.messages, null, 2);
    body.messages.forEach((m, i) => {
      const role = document.createElement("span");
      role.className = "msg-role";
      role.textContent = m.role;
      out.appendChild(role);
      const after = data.messages && data.messages[i] ? data.messages[i].content : m.content;
      appendAligned(out, String(m.content ?? ""), String(after ?? ""));
    });
  } else {
    $("compressed").textContent = data.compressed_text;
    if (data.word_labels) appendLabelled(out, body.text, data.word_labels);
    else appendAligned(out, body.text, data.compressed_text);
  }
}

function span(parent, text, cls) {
  if (!text) return;
  if (!cls) { parent.appendChild(document.createTextNode(text)); return; }
  const s = document.createElement("span");
  s.className = cls;
  s.textContent = text;
  parent.appendChild(s);
}

// Words the server labelled, found in order in the original text; anything not found falls back to alignment.
function appendLabelled(parent, text, labels) {
  let pos = 0;
  for (const {word, keep} of labels) {
    const at = text.indexOf(word, pos);
    if (at < 0) { appendAligned(parent, text.slice(pos), ""); return; }
    span(parent, text.slice(pos, at), null);
    span(parent, word, keep ? "kept" : "dropped");
    pos = at + word.length;
  }
  span(parent, text.slice(pos), null);
}

// Kept words are those of BEFORE that appear, in order, in AFTER (compression only deletes words).
function appendAligned(parent, before, after) {
  const want = after.split(/\s+/).filter(Boolean);
  let j = 0;
  for (const piece of before.split(/(\s+)/)) {
    if (!piece) continue;
    if (/^\s+$/.test(piece)) { span(parent, piece, null); continue; }
    if (j < want.length && want[j] === piece) { span(parent, piece, "kept"); j += 1; } else span(parent, piece, "dropped");
  }
}

function shellQuote(s) { return `'${s.replace(/'/g, "'\\''")}'`; }

function renderCode() {
  if (!lastBody) return;
  const base = `${location.protocol}//${location.host}`;
  const key = $("key").value.trim() ? " \\\n  -H 'Authorization: Bearer $PROMPTWIRE_API_KEY'" : "";
  let code;
  if (picked("code") === "curl") {
    code = `curl ${base}/v1/compress \\\n  -H 'Content-Type: application/json'${key} \\\n  -d ${shellQuote(JSON.stringify(lastBody))}`;
  } else {
    const opts = {...lastBody};
    delete opts.text; delete opts.messages; delete opts.return_word_labels;
    const messages = lastBody.messages || [
      {role: "system", content: lastBody.text},
      {role: "user", content: "Your question here"},
    ];
    code = [
      "from openai import OpenAI",
      "",
      `client = OpenAI(base_url="${base}/v1", api_key=${$("key").value.trim() ? '"$PROMPTWIRE_API_KEY"' : '"unused"'})`,
      "reply = client.chat.completions.create(",
      `    model=${JSON.stringify(modelName)},`,
      `    messages=${JSON.stringify(messages, null, 4).replace(/\n/g, "\n    ")},`,
      `    extra_body={"promptwire": {"compress": ${pyLiteral(opts)}}},`,
      ")",
      "print(reply.choices[0].message.content)",
    ].join("\n");
  }
  $("code").textContent = code;
}

function pyLiteral(v) {
  return JSON.stringify(v).replace(/\btrue\b/g, "True").replace(/\bfalse\b/g, "False").replace(/\bnull\b/g, "None");
}

async function loadModels() {
  try {
    const resp = await fetch("/v1/models", {headers: authHeaders()});
    if (!resp.ok) return;
    const data = await resp.json();
    if (data.data && data.data.length) modelName = data.data[0].id;
  } catch (e) { /* the code sample keeps its default model name */ }
}

function init() {
  $("input").value = SAMPLE_TEXT;
  $("rate").addEventListener("input", () => { $("rate-out").textContent = Number($("rate").value).toFixed(2); });
  document.querySelectorAll('input[name="kind"]').forEach((r) => r.addEventListener("change", () => {
    const cur = $("input").value;
    if (cur === SAMPLE_TEXT || cur === SAMPLE_MESSAGES || !cur.trim()) {
      $("input").value = picked("kind") === "text" ? SAMPLE_TEXT : SAMPLE_MESSAGES;
    }
  }));
  document.querySelectorAll('input[name="code"]').forEach((r) => r.addEventListener("change", renderCode));
  $("run").addEventListener("click", run);
  $("copy").addEventListener("click", () => navigator.clipboard && navigator.clipboard.writeText($("code").textContent));
  loadModels();
  try { lastBody = buildBody(); } catch (e) { lastBody = null; }
  renderCode();
}

document.addEventListener("DOMContentLoaded", init);
