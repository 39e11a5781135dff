// The lmforge playground: streams /v1/completions or /v1/chat/completions (OpenAI's SSE chunks)
// into one span per token, each carrying its logprob and top-5 alternatives for the hover tooltip.
// Plain JS, no build step: fetch + a ReadableStream reader, since EventSource cannot POST.
"use strict";

const $ = (id) => document.getElementById(id);
const TOP_N = 5;
let controller = null; // the AbortController of the running request; aborting it is Stop
let messages = []; // the chat so far, as OpenAI messages

function mode() {
  return document.querySelector('input[name="mode"]:checked').value;
}

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api_key").value.trim();
  if (key) h.Authorization = `Bearer ${key}`;
  return h;
}

// ---- the request ----------------------------------------------------------------------------

function samplingFields() {
  const f = {
    model: $("model").value || undefined,
    temperature: Number($("temperature").value),
    top_p: Number($("top_p").value),
    max_tokens: Number($("max_tokens").value),
    stream: true,
    stream_options: { include_usage: true },
  };
  const topK = Number($("top_k").value);
  if (topK > 0) f.top_k = topK;
  if ($("seed").value !== "") f.seed = Number($("seed").value);
  const stops = $("stop_strings")
    .value.split("\n")
    .filter((s) => s !== "")
    .map((s) => s.replaceAll("\\n", "\n"));
  if (stops.length) f.stop = stops;
  return f;
}

function buildRequest(text) {
  if (mode() === "chat") {
    return {
      url: "/v1/chat/completions",
      body: { ...samplingFields(), messages, logprobs: true, top_logprobs: TOP_N },
    };
  }
  return { url: "/v1/completions", body: { ...samplingFields(), prompt: text, logprobs: TOP_N } };
}

// ---- reading the stream ---------------------------------------------------------------------

// Yields the data of each server-sent event ("data: ...\n\n") as it arrives.
async function* sseData(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      const events = buffer.split(/\r?\n\r?\n/);
      buffer = events.pop();
      for (const event of events) {
        const data = event
          .split(/\r?\n/)
          .filter((line) => line.startsWith("data:"))
          .map((line) => line.slice(5).replace(/^ /, ""))
          .join("\n");
        if (data) yield data;
      }
    }
  } finally {
    reader.cancel().catch(() => {}); // a consumer that stops early closes the connection
  }
}

// One choice's new text and its tokens as {token, logprob, top: [{token, logprob}]}, from a
// completion chunk (logprobs.tokens/token_logprobs/top_logprobs) or a chat chunk (logprobs.content).
function choiceParts(choice) {
  if ("delta" in choice) {
    const content = choice.logprobs?.content ?? [];
    return {
      text: choice.delta.content ?? "",
      tokens: content.map((c) => ({ token: c.token, logprob: c.logprob, top: c.top_logprobs ?? [] })),
    };
  }
  const lp = choice.logprobs;
  const tokens = (lp?.tokens ?? []).map((token, i) => ({
    token,
    logprob: lp.token_logprobs[i],
    top: Object.entries(lp.top_logprobs?.[i] ?? {}).map(([t, logprob]) => ({ token: t, logprob })),
  }));
  return { text: choice.text ?? "", tokens };
}

async function errorMessage(response) {
  try {
    const body = await response.json();
    return body.error?.message ?? JSON.stringify(body);
  } catch {
    return response.statusText;
  }
}

// ---- rendering ------------------------------------------------------------------------------

function atBottom(el) {
  return el.scrollHeight - el.scrollTop - el.clientHeight < 4;
}

// A chunk's text as nodes: one span per token when the tokens spell the text (a stop string or a
// split UTF-8 character can make them differ: then plain text).
function textNodes(text, tokens) {
  if (!tokens.length || tokens.map((t) => t.token).join("") !== text) {
    return [document.createTextNode(text)];
  }
  return tokens.map((t) => {
    const span = document.createElement("span");
    span.className = "tok";
    span.textContent = t.token;
    span.dataset.logprob = t.logprob;
    span.dataset.top = JSON.stringify(t.top);
    // rarer tokens get a warmer background
    span.style.setProperty("--surprise", (1 - Math.exp(t.logprob)).toFixed(2));
    return span;
  });
}

// New text is appended once per frame: reading the scroll position lays the page out, and doing
// that per token makes a long stream slower with every token.
let unshown = []; // [target, nodes] not yet on the page
let frame = 0;

function appendText(target, text, tokens) {
  unshown.push([target, textNodes(text, tokens)]);
  if (!frame) frame = requestAnimationFrame(showText);
}

function showText() {
  cancelAnimationFrame(frame);
  frame = 0;
  const out = $("output");
  const follow = atBottom(out); // scroll along only if the reader is already at the bottom
  for (const [target, nodes] of unshown) target.append(...nodes);
  unshown = [];
  if (follow) out.scrollTop = out.scrollHeight;
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

function setRunning(running) {
  $("output").setAttribute("aria-busy", running); // screen readers read the text once, at the end
  $("generate").disabled = running;
  $("stop").disabled = !running;
  $("clear").disabled = running; // mode and history stay put while a reply streams
  for (const radio of document.querySelectorAll('input[name="mode"]')) radio.disabled = running;
}

function bubble(role, text) {
  const div = document.createElement("div");
  div.className = `msg ${role}`;
  div.textContent = text;
  $("output").append(div);
  return div;
}

// ---- one generation -------------------------------------------------------------------------

async function generate(text) {
  showError("");
  const out = $("output");
  const chat = mode() === "chat";
  let target, asked;
  if (chat) {
    messages.push({ role: "user", content: text });
    asked = bubble("user", text);
    target = bubble("assistant", "");
    $("prompt").value = "";
  } else {
    out.replaceChildren();
    target = document.createElement("span");
    const shown = document.createElement("span");
    shown.className = "prompt-text";
    shown.textContent = text;
    out.append(shown, target);
  }
  out.scrollTop = out.scrollHeight;

  const { url, body } = buildRequest(text);
  const stats = { start: performance.now(), first: 0, count: 0 };
  let reply = "";
  let held = []; // tokens whose text has not come yet
  $("ttft").textContent = "-";
  $("tps").textContent = "-";
  $("ntokens").textContent = "0";
  $("finish").textContent = "";
  controller = new AbortController();
  setRunning(true);
  try {
    const response = await fetch(url, {
      method: "POST",
      headers: headers(),
      body: JSON.stringify(body),
      signal: controller.signal,
    });
    if (!response.ok) {
      showError(`HTTP ${response.status}: ${await errorMessage(response)}`);
      return;
    }
    let done = false;
    for await (const data of sseData(response)) {
      if (data === "[DONE]") {
        done = true;
        break;
      }
      const chunk = JSON.parse(data);
      if (chunk.error) {
        showError(chunk.error.message ?? JSON.stringify(chunk.error));
        done = true;
        break;
      }
      for (const choice of chunk.choices ?? []) {
        const part = choiceParts(choice);
        if (part.text || part.tokens.length) {
          const now = performance.now();
          if (!stats.first) {
            stats.first = now;
            $("ttft").textContent = `${Math.round(now - stats.start)} ms`;
          }
          stats.count += part.tokens.length || 1;
          const seconds = (now - stats.first) / 1000;
          if (seconds > 0) $("tps").textContent = ((stats.count - 1) / seconds).toFixed(1);
          $("ntokens").textContent = stats.count;
        }
        // a token can come before its text (half a UTF-8 character, a possible stop string)
        held.push(...part.tokens);
        if (part.text) {
          reply += part.text;
          appendText(target, part.text, held);
          held = [];
        }
        if (choice.finish_reason) $("finish").textContent = `finished: ${choice.finish_reason}`;
      }
    }
    if (!done) showError("the stream ended before data: [DONE] (did the server stop?)");
  } catch (err) {
    if (err.name === "AbortError") $("finish").textContent = "stopped";
    else showError(`${err.name}: ${err.message}`);
  } finally {
    showText();
    controller = null;
    setRunning(false);
    if (chat && reply) {
      messages.push({ role: "assistant", content: reply });
    } else if (chat) {
      // no answer (an error, or stopped before the first token): take the question back
      messages.pop();
      asked.remove();
      target.remove();
      if (!$("prompt").value) $("prompt").value = text;
    }
  }
}

// ---- the tooltip ----------------------------------------------------------------------------

function visible(token) {
  return token.replaceAll("\n", "\u21b5").replaceAll("\t", "\u21e5").replaceAll(" ", "\u2423");
}

function showTooltip(span) {
  const tip = $("tooltip");
  const chosen = span.textContent;
  const top = JSON.parse(span.dataset.top).sort((a, b) => b.logprob - a.logprob);
  const rows = top.map(({ token, logprob }) => {
    const row = document.createElement("div");
    row.className = token === chosen ? "row chosen" : "row";
    const name = document.createElement("code");
    name.textContent = visible(token);
    const p = document.createElement("span");
    p.className = "p";
    p.textContent = `${(100 * Math.exp(logprob)).toFixed(1)}%`;
    row.append(name, p);
    return row;
  });
  const head = document.createElement("div");
  head.className = "head";
  head.textContent = `${visible(chosen)}  ${(100 * Math.exp(Number(span.dataset.logprob))).toFixed(1)}%`;
  tip.replaceChildren(head, ...rows);
  tip.hidden = false;
  const r = span.getBoundingClientRect();
  const left = Math.min(r.left, window.innerWidth - tip.offsetWidth - 8);
  const below = r.bottom + 6 + tip.offsetHeight < window.innerHeight;
  tip.style.left = `${Math.max(8, left)}px`;
  tip.style.top = `${below ? r.bottom + 6 : r.top - tip.offsetHeight - 6}px`;
}

// ---- wiring ---------------------------------------------------------------------------------

async function loadModels() {
  try {
    const response = await fetch("/v1/models", { headers: headers() });
    if (!response.ok) {
      showError(`HTTP ${response.status}: ${await errorMessage(response)}`);
      return;
    }
    const { data } = await response.json();
    $("model").replaceChildren(...data.map((m) => new Option(m.id, m.id)));
    showError("");
  } catch (err) {
    showError(`${err.name}: ${err.message}`);
  }
}

function setMode() {
  const chat = mode() === "chat";
  messages = [];
  $("output").replaceChildren();
  document.querySelector('label[for="prompt"]').textContent = chat ? "Message" : "Prompt";
  $("prompt").placeholder = chat ? "Say something" : "ROMEO:";
  $("generate").textContent = chat ? "Send" : "Generate";
}

document.addEventListener("DOMContentLoaded", () => {
  for (const id of ["temperature", "top_p"]) {
    const show = () => (document.querySelector(`output[for="${id}"]`).textContent = $(id).value);
    $(id).addEventListener("input", show);
    show();
  }
  for (const radio of document.querySelectorAll('input[name="mode"]')) {
    radio.addEventListener("change", setMode);
  }
  $("prompt-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("prompt").value;
    if (!controller && text.trim()) generate(text);
  });
  $("prompt").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) $("prompt-form").requestSubmit();
  });
  $("settings").addEventListener("submit", (event) => event.preventDefault());
  $("stop").addEventListener("click", () => controller?.abort());
  $("clear").addEventListener("click", setMode);
  $("api_key").addEventListener("change", loadModels);
  $("output").addEventListener("mouseover", (event) => {
    if (event.target.classList.contains("tok")) showTooltip(event.target);
  });
  $("output").addEventListener("mouseout", (event) => {
    if (event.target.classList.contains("tok")) $("tooltip").hidden = true;
  });
  loadModels();
});
