// The gapless serve page: German in, English out through POST v1/translate (relative URLs:
// the page also works behind a proxy under a path prefix).
"use strict";

const $ = (id) => document.getElementById(id);
const form = $("form"), source = $("source"), beam = $("beam"), nbest = $("nbest");
const button = $("translate"), statusLine = $("status"), errorLine = $("error");
const output = $("output"), modelLine = $("model");
let pending = 0; // the number of the latest request: older answers are ignored

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

const fmt = (score) => (score === null ? "–" : score.toFixed(3));

function showModel(info) {
  modelLine.textContent = "";
  modelLine.append("Model ", el("strong", "", info.name));
  const e = info.engine || {};
  const how = [e.engine, e.device, e.dtype].filter(Boolean).join(", ");
  if (how) modelLine.append(` · ${how}`);
  const scores = Object.entries(info.scores || {});
  if (scores.length) {
    const parts = scores.map(([split, s]) => `${split} ${Number(s.bleu).toFixed(2)}`);
    modelLine.append(" · BLEU ", el("strong", "", parts.join(", ")));
  } else {
    modelLine.append(" · no BLEU score yet (gapless evaluate RUN)");
  }
  const limits = info.limits || {};
  if (limits.max_beam) beam.max = limits.max_beam;
  if (info.decode && info.decode.beam) beam.value = info.decode.beam;
  syncNbest();
  document.body.dataset.model = "ready";
}

function syncNbest() {
  const b = Math.max(1, parseInt(beam.value, 10) || 1);
  nbest.max = b;
  if ((parseInt(nbest.value, 10) || 1) > b) nbest.value = b;
}

function showError(message) {
  errorLine.textContent = message;
  errorLine.hidden = !message;
}

function render(answer, count) {
  output.textContent = "";
  for (const t of answer.translations) {
    const item = el("li");
    item.append(el("span", "best", t.text), el("span", "score", fmt(t.score)));
    if (t.truncated) item.append(el("span", "flag", "(input truncated to the model's length)"));
    if (t.alternatives.length) {
      item.append(el("p", "alt-title", "Alternatives"));
      const alts = el("ol", "alternatives");
      alts.start = 2; // the best translation is the first
      alts.setAttribute("aria-label", "Alternatives");
      for (const a of t.alternatives) {
        const alt = el("li");
        alt.append(el("span", "alt", a.text), el("span", "score", fmt(a.score)));
        alts.append(alt);
      }
      item.append(alts);
    }
    output.append(item);
  }
  const s = answer.settings;
  statusLine.textContent = `Translated ${count} sentence${count === 1 ? "" : "s"} in ` +
    `${answer.seconds.toFixed(2)} s · beam ${s.beam}` +
    (s.n_best > 1 ? ` · ${s.n_best} best` : "") + ` · ${answer.model}`;
}

async function translate() {
  const lines = source.value.split("\n").map((l) => l.trim()).filter((l) => l);
  showError("");
  if (!lines.length) {
    showError("Type or paste German text first.");
    source.focus();
    return;
  }
  const mine = ++pending;
  button.setAttribute("aria-busy", "true");
  output.setAttribute("aria-busy", "true");
  statusLine.textContent = "Translating…";
  const body = {text: lines, beam: parseInt(beam.value, 10), n_best: parseInt(nbest.value, 10)};
  try {
    const response = await fetch("v1/translate", {
      method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body),
    });
    const answer = await response.json();
    if (mine !== pending) return;
    if (!response.ok) {
      statusLine.textContent = "";
      showError(`Error ${response.status}: ${answer.detail}`);
      return;
    }
    render(answer, lines.length);
    output.dataset.state = "done";
  } catch (err) {
    if (mine === pending) {
      statusLine.textContent = "";
      showError(`The server did not answer (${err.message}).`);
    }
  } finally {
    if (mine === pending) {
      button.removeAttribute("aria-busy");
      output.removeAttribute("aria-busy");
    }
  }
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  translate();
});
document.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
    event.preventDefault();
    translate();
  }
});
beam.addEventListener("input", syncNbest);

fetch("v1/model")
  .then((r) => r.json())
  .then(showModel)
  .catch((err) => { modelLine.textContent = `Model information unavailable (${err.message}).`; });
