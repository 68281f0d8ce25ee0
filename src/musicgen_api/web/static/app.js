// The page's behaviour: the form and its limits, one generation at a time with progress and Cancel, the result
// card, and the history list. The server validates every request; the page shows its message and points at the
// field it names, so the rules live in one place.

import { Failed, Refused, Unreachable, fetchHealth, fetchLimits, generate } from "./api.js";
import { addClip, clearClips, deleteClip, listClips } from "./history.js";
import { parseWav } from "./wav.js";
import { Waveform } from "./waveform.js";

const $ = (selector) => document.querySelector(selector);
const form = $("#form");
const description = $("#description");
const duration = $("#duration");
const slider = $("#duration-slider");
const generateButton = $("#generate");
const cancelButton = $("#cancel");
const progress = $("#progress");
const message = $("#message");
const statusBadge = $("#server-status");
const player = $("#player");
const waveform = new Waveform($("#waveform"), player);
const FIELDS = ["description", "duration", "top_k", "top_p", "temperature", "cfg_coef", "mbd"];
const SPEC_DEFAULT_DURATION = 30;
const HEALTH_POLL_MS = { healthy: 5000, busy: 1000, offline: 3000 }; // watch closely while it is about to free up

let running = null; // the AbortController of the generation in flight
let percentDone = 0; // of the generation in flight, for the time-left estimate
let healthTimer = null;
let shownUrl = null; // the object URL the player and the download link use

// ---- form, limits -------------------------------------------------------------------------------------------

function applyLimits(limits) {
  const maxDuration = limits?.max_duration ?? SPEC_DEFAULT_DURATION;
  for (const box of [duration, slider]) box.max = maxDuration;
  setDuration(Math.min(SPEC_DEFAULT_DURATION, maxDuration));
  if (limits?.max_description_chars) description.maxLength = limits.max_description_chars;
  if (limits?.mbd_available === false) {
    input("mbd").disabled = true;
    $("#mbd-note").textContent = "(turned off on this server)";
  }
  countChars();
}

function setDuration(seconds) {
  duration.value = seconds;
  slider.value = seconds;
}

function countChars() {
  $("#char-count").textContent = `${description.value.length} / ${description.maxLength}`;
}

function input(name) {
  return form.elements[name];
}

/** The request body, or a local message when a number box holds something that is not a number. */
function readParams() {
  const params = { description: description.value, mbd: input("mbd").checked };
  for (const name of ["duration", "top_k", "top_p", "temperature", "cfg_coef"]) {
    const box = input(name);
    if (box.validity.badInput) return { problem: `${name} must be a number`, field: name };
    if (box.value.trim() !== "") params[name] = Number(box.value);
  }
  if (!params.description.trim()) return { problem: "describe the music first", field: "description" };
  return { params };
}

function resetAdvanced() {
  for (const box of form.querySelectorAll("[data-default]")) {
    if (box.type === "checkbox") box.checked = box.dataset.default === "true";
    else box.value = box.dataset.default;
  }
  clearInvalid();
}

function markInvalid(field) {
  const box = field && input(field);
  if (!box) return;
  box.setAttribute("aria-invalid", "true");
  const folded = box.closest("details");
  if (folded) folded.open = true;
  box.focus();
}

function clearInvalid() {
  for (const box of form.querySelectorAll("[aria-invalid]")) box.removeAttribute("aria-invalid");
}

/** The form field a server message is about: its messages start with the field's name. */
function fieldNamedIn(text) {
  return FIELDS.find((name) => text.startsWith(`${name} `) || text.startsWith(`${name}:`));
}

// ---- messages, progress, status -----------------------------------------------------------------------------

function say(kind, lead, detail = "") {
  message.dataset.kind = kind;
  message.querySelector("strong").textContent = lead;
  message.querySelector("span").textContent = detail;
  message.hidden = false;
}

function explain(error) {
  if (error.name === "AbortError") return say("info", "Cancelled.", "The server has stopped this generation.");
  if (error instanceof Refused && error.status === 400) {
    markInvalid(fieldNamedIn(error.message));
    return say("error", "Not accepted:", error.message);
  }
  if (error instanceof Refused && error.status === 503) {
    const wait = error.retryAfter ? `in ${error.retryAfter} s` : "in a few seconds";
    return say("warn", "The server is busy", `with another generation. Try again ${wait}.`);
  }
  if (error instanceof Refused) return say("error", "Server error:", error.message);
  if (error instanceof Failed) return say("error", "Generation failed:", error.message);
  if (error instanceof Unreachable) return say("error", "Connection problem:", error.message);
  return say("error", "Something went wrong:", error.message);
}

function showProgress(percent, text) {
  percentDone = percent ?? 0;
  progress.dataset.phase = percent === null ? "waiting" : "generating";
  progress.setAttribute("aria-valuenow", String(percent ?? 0));
  progress.querySelector(".fill").style.width = `${percent ?? 0}%`;
  $("#progress-text").textContent = text;
}

function setBadge(state) {
  const words = { healthy: "ready", busy: "busy", offline: "offline", generating: "generating…" };
  statusBadge.dataset.state = state;
  statusBadge.textContent = words[state] ?? state;
}

async function refreshBadge() {
  clearTimeout(healthTimer);
  if (running || document.visibilityState !== "visible") return;
  const state = await fetchHealth();
  if (running) return;
  setBadge(state);
  clearTimeout(healthTimer);
  healthTimer = setTimeout(refreshBadge, HEALTH_POLL_MS[state]);
}

function timeText(elapsed) {
  const left = percentDone >= 5 && percentDone < 100 ? (elapsed * (100 - percentDone)) / percentDone : null;
  return `${elapsed.toFixed(1)} s` + (left === null ? "" : ` · about ${Math.ceil(left)} s left`);
}

// ---- one generation -----------------------------------------------------------------------------------------

async function run() {
  if (running) return;
  clearInvalid();
  message.hidden = true;
  const { params, problem, field } = readParams();
  if (problem) {
    markInvalid(field);
    return say("error", "Check the form:", problem);
  }
  running = new AbortController();
  percentDone = 0;
  $("#elapsed").textContent = "";
  const started = performance.now();
  const clock = setInterval(() => ($("#elapsed").textContent = timeText((performance.now() - started) / 1000)), 100);
  generateButton.disabled = true;
  cancelButton.hidden = false;
  $("#progress-box").hidden = false;
  showProgress(null, "Waiting for the server…");
  setBadge("generating");
  try {
    const bytes = await generate(params, {
      signal: running.signal,
      onProgress: (percent) => showProgress(percent, percent < 100 ? `Generating… ${percent}%` : "Finishing…"),
    });
    const wav = parseWav(bytes);
    const clip = {
      prompt: params.description.trim(),
      params,
      wav: new Blob([bytes], { type: "audio/wav" }),
      seconds: wav.seconds,
      channels: wav.channels,
      sampleRate: wav.sampleRate,
      generationSeconds: (performance.now() - started) / 1000,
      createdAt: Date.now(),
    };
    showClip(await remember(clip), wav);
  } catch (error) {
    explain(error);
  } finally {
    clearInterval(clock);
    running = null;
    generateButton.disabled = false;
    cancelButton.hidden = true;
    $("#progress-box").hidden = true;
    refreshBadge();
  }
}

// ---- the result card ----------------------------------------------------------------------------------------

function fileName(prompt) {
  const slug = prompt.toLowerCase().replace(/[^\p{L}\p{N}]+/gu, "-").replace(/^-+|-+$/g, "").slice(0, 60);
  return `${slug.replace(/-+$/, "") || "musicgen"}.wav`;
}

function describe(clip) {
  const channels = clip.channels === 1 ? "mono" : clip.channels === 2 ? "stereo" : `${clip.channels} channels`;
  const when = new Date(clip.createdAt).toLocaleString([], { dateStyle: "short", timeStyle: "short" });
  return `${clip.seconds.toFixed(1)} s · ${channels} · ${clip.sampleRate / 1000} kHz · ` +
    `made in ${clip.generationSeconds.toFixed(1)} s · ${when}`;
}

function showClip(clip, wav) {
  if (shownUrl) URL.revokeObjectURL(shownUrl);
  shownUrl = URL.createObjectURL(clip.wav);
  player.src = shownUrl;
  const download = $("#download");
  download.href = shownUrl;
  download.download = fileName(clip.prompt);
  $("#result-title").textContent = clip.prompt;
  $("#result-meta").textContent = describe(clip);
  $("#result").hidden = false;
  waveform.show(wav);
  for (const item of document.querySelectorAll("#history li")) {
    item.setAttribute("aria-current", String(item.dataset.id === String(clip.id)));
  }
}

async function open(clip) {
  const wav = parseWav(new Uint8Array(await clip.wav.arrayBuffer()));
  showClip(clip, wav);
  $("#result").scrollIntoView({ behavior: "smooth", block: "nearest" });
}

// ---- history ------------------------------------------------------------------------------------------------

let historyWorks = true;

async function remember(clip) {
  if (!historyWorks) return clip;
  try {
    const kept = await addClip(clip);
    await renderHistory(kept.id);
    return kept;
  } catch {
    historyUnavailable();
    return clip;
  }
}

function historyUnavailable() {
  historyWorks = false;
  $("#history-note").textContent = "This browser does not allow keeping clips here (private mode?).";
}

function historyItem(clip, currentId) {
  const item = document.createElement("li");
  item.dataset.id = String(clip.id);
  item.setAttribute("aria-current", String(clip.id === currentId));
  const openButton = document.createElement("button");
  openButton.type = "button";
  openButton.className = "clip-open";
  openButton.title = "Show and play";
  const prompt = document.createElement("span");
  prompt.className = "clip-prompt";
  prompt.textContent = clip.prompt;
  const meta = document.createElement("span");
  meta.className = "clip-meta";
  meta.textContent = describe(clip);
  openButton.append(prompt, meta);
  openButton.addEventListener("click", () => open(clip).then(() => player.play()).catch(() => {}));
  const reuse = iconButton("↺", "Use this prompt and its settings", () => fill(clip.params));
  const remove = iconButton("✕", "Delete this clip", async () => {
    await deleteClip(clip.id);
    await renderHistory();
  });
  item.append(openButton, reuse, remove);
  return item;
}

function iconButton(symbol, label, action) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = "icon";
  button.textContent = symbol;
  button.title = label;
  button.setAttribute("aria-label", label);
  button.addEventListener("click", action);
  return button;
}

function fill(params) {
  resetAdvanced();
  description.value = params.description;
  for (const [name, value] of Object.entries(params)) {
    if (name === "mbd") input(name).checked = value;
    else if (name !== "description") input(name).value = value;
  }
  slider.value = duration.value;
  countChars();
  description.focus();
}

async function renderHistory(currentId = null) {
  const clips = await listClips();
  const list = $("#history");
  list.replaceChildren(...clips.map((clip) => historyItem(clip, currentId)));
  $("#clear-history").hidden = clips.length === 0;
  return clips;
}

// ---- wiring -------------------------------------------------------------------------------------------------

form.addEventListener("submit", (event) => {
  event.preventDefault();
  run();
});
cancelButton.addEventListener("click", () => running?.abort());
description.addEventListener("input", countChars);
description.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
    event.preventDefault();
    run();
  }
});
document.addEventListener("keydown", (event) => {
  if (event.key === "Escape" && running) running.abort();
});
form.addEventListener("input", (event) => event.target.removeAttribute?.("aria-invalid"));
slider.addEventListener("input", () => (duration.value = slider.value));
duration.addEventListener("input", () => (slider.value = duration.value));
$("#reset").addEventListener("click", resetAdvanced);
for (const chip of document.querySelectorAll(".chip")) {
  chip.addEventListener("click", () => {
    description.value = chip.dataset.prompt;
    countChars();
    description.focus();
  });
}
$("#clear-history").addEventListener("click", async () => {
  await clearClips();
  await renderHistory();
});
document.addEventListener("visibilitychange", refreshBadge);

applyLimits(await fetchLimits());
refreshBadge();
renderHistory().catch(historyUnavailable);
