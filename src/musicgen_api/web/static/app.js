// The page's behaviour: the form and its limits, one generation at a time with progress and Cancel, the result
// card, and the history list. The server validates every request; the page shows its message and points at the
// field it names, so the rules live in one place.

import {
  Failed, NeedsKey, Refused, Unreachable, apiKey, fetchHealth, fetchLimits, forgetApiKey, generate, setApiKey,
} from "./api.js";
import { addClip, clearClips, deleteClip, listClips } from "./history.js";
import { StreamPlayer } from "./stream.js";
import { decodeAudio } from "./wav.js";
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
const keyDialog = $("#key-dialog");
const keyInput = $("#key-input");
const keyError = $("#key-error");
const forgetKeyButton = $("#forget-key");
const SPEC_DEFAULT_DURATION = 30;
const HEALTH_POLL_MS = { healthy: 5000, busy: 1000, offline: 3000 }; // watch closely while it is about to free up

let running = null; // the AbortController of the generation in flight
let live = null; // the StreamPlayer of the piece playing as it is made, until it ends or is stopped
let liveTimer = null;
let percentDone = 0; // of the generation in flight, for the time-left estimate
let healthTimer = null;
let shownUrl = null; // the object URL the player and the download link use
let shownSeed = null; // the seed of the clip on show, as the server wrote it
let keyAsked = null; // while the key dialog is open: the promise every call that wants the key waits on
let keyAnswered = null; // resolves keyAsked: true with a key entered, false when dismissed

// ---- form, limits -------------------------------------------------------------------------------------------

function applyLimits(limits) {
  const maxDuration = limits?.max_duration ?? SPEC_DEFAULT_DURATION;
  for (const box of [duration, slider]) box.max = maxDuration;
  setDuration(Math.min(SPEC_DEFAULT_DURATION, maxDuration));
  if (limits?.max_description_chars) description.maxLength = limits.max_description_chars;
  showMbd(limits);
  applyDefaults(limits?.fields);
  countChars();
}

const MBD_NOTES = {
  ready: "(slower, cleaner)",
  loading: "(its weights are still downloading on the server)",
  unavailable: "(unavailable on this server)",
  off: "(turned off on this server)",
};
const MBD_POLL_MS = 10000;

/** The MBD box follows the server's MultiBand Diffusion state; while it loads, /api/info is asked again. */
function showMbd(limits) {
  const state = limits?.mbd?.state ?? (limits?.mbd_available === false ? "off" : "ready");
  const box = input("mbd");
  box.disabled = state !== "ready";
  if (box.disabled) box.checked = false;
  const note = $("#mbd-note");
  note.textContent = MBD_NOTES[state] ?? `(${state})`;
  note.title = limits?.mbd?.reason ?? "";
  if (state === "loading") {
    setTimeout(async () => showMbd((await fetchLimits().catch(() => null)) ?? limits), MBD_POLL_MS);
  }
}

/** The server's own defaults (its /api/info `fields`) for the boxes that have one; then the boxes reset to them. */
function applyDefaults(fields) {
  for (const [name, field] of Object.entries(fields ?? {})) {
    const box = input(name);
    if (box?.dataset?.default === undefined || field.default == null) continue;
    const same = typeof field.default === "number" && Number(box.dataset.default) === field.default; // keep "1.0"
    if (!same) box.dataset.default = String(field.default);
  }
  resetAdvanced();
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

/** The request body, or a local message when a number box holds something that is not a number or the audio
 * file cannot be read. The seed stays text (see api.js); the server checks it. */
async function readParams() {
  const params = { description: description.value, mbd: input("mbd").checked };
  for (const name of ["duration", "top_k", "top_p", "temperature", "cfg_coef"]) {
    const box = input(name);
    if (box.validity.badInput) return { problem: `${name} must be a number`, field: name };
    if (box.value.trim() !== "") params[name] = Number(box.value);
  }
  const seed = input("seed").value.trim();
  if (seed !== "") params.seed = seed;
  params.format = input("format").value;
  params.normalization = input("normalization").value;
  if (!params.description.trim()) return { problem: "describe the music first", field: "description" };
  const file = input("audio_prompt").files[0];
  if (file) {
    try {
      params.audio_prompt = await base64Of(file);
    } catch {
      return { problem: `cannot read ${file.name}; choose the file again`, field: "audio_prompt" };
    }
    params.return_prompt = input("return_prompt").checked;
  }
  return { params };
}

function base64Of(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result.slice(reader.result.indexOf(",") + 1)); // after "data:...;base64,"
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

/** "Include the prompt" means something only with a prompt file chosen. */
function syncAudioPrompt() {
  const chosen = input("audio_prompt").files.length > 0;
  input("return_prompt").disabled = !chosen;
  $("#clear-audio-prompt").hidden = !chosen;
}

function resetAdvanced() {
  for (const box of form.querySelectorAll("[data-default]")) {
    if (box.type === "checkbox") box.checked = box.dataset.default === "true";
    else box.value = box.dataset.default;
  }
  syncAudioPrompt();
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

// ---- the API key (servers started with --api-key) ------------------------------------------------------------

/** Run `call` (a function of the API); when the server wants a key, ask for it and run `call` again. Rejects with
 * the NeedsKey error when the person dismisses the dialog. */
async function withKey(call) {
  for (;;) {
    try {
      return await call();
    } catch (error) {
      if (!(error instanceof NeedsKey) || !(await askForKey(error))) throw error;
    }
  }
}

/** Open the key dialog (once, however many calls want it); a refused key is dropped and the server's message shown. */
function askForKey(error) {
  if (error.keySent) {
    forgetApiKey();
    showKeyError(`That key was refused: ${error.message}`);
  }
  syncForgetKey();
  if (statusBadge.dataset.state === "unknown") refreshBadge(); // the healthcheck needs no key
  if (keyAsked) return keyAsked;
  keyAsked = new Promise((resolve) => (keyAnswered = resolve));
  keyInput.value = "";
  keyDialog.showModal();
  keyInput.focus();
  return keyAsked;
}

function showKeyError(text) {
  keyError.textContent = text;
  keyError.hidden = !text;
  if (text) keyInput.setAttribute("aria-invalid", "true");
  else keyInput.removeAttribute("aria-invalid");
}

function answerKey(entered) {
  const resolve = keyAnswered;
  keyAsked = keyAnswered = null;
  if (keyDialog.open) keyDialog.close();
  showKeyError("");
  syncForgetKey();
  resolve?.(entered);
}

function syncForgetKey() {
  forgetKeyButton.hidden = apiKey() === null;
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
  if (error instanceof NeedsKey) {
    return say("error", "API key needed:", "this server wants one. Press Generate to enter it.");
  }
  if (error instanceof Refused && error.status === 400) {
    markInvalid(error.field);
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

/** Play the coming piece as it is made, where this browser has Web Audio; returns the chunk handler, or null. */
function startLive(seconds) {
  stopLive();
  if (!window.AudioContext) return null;
  live = new StreamPlayer();
  const player = live;
  liveTimer = setInterval(() => {
    const played = player.played();
    progress.dataset.playing = String(player.playing());
    progress.querySelector(".played").style.width = `${Math.min(100, (100 * played) / seconds)}%`;
    $("#live-note").hidden = running !== null || !player.playing();
    if (running === null && !player.playing() && played > 0) stopLive(); // it has played to the end
  }, 100);
  return (chunk) => player.push(chunk);
}

function stopLive() {
  clearInterval(liveTimer);
  live?.stop();
  live = null;
  progress.dataset.playing = "false";
  $("#live-note").hidden = true;
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
  const { params, problem, field } = await readParams();
  if (problem) {
    markInvalid(field);
    return say("error", "Check the form:", problem);
  }
  running = new AbortController();
  percentDone = 0;
  $("#elapsed").textContent = "";
  let started = performance.now();
  const clock = setInterval(() => ($("#elapsed").textContent = timeText((performance.now() - started) / 1000)), 100);
  generateButton.disabled = true;
  cancelButton.hidden = false;
  $("#progress-box").hidden = false;
  showProgress(null, "Waiting for the server…");
  setBadge("generating");
  const onAudio = startLive(params.duration ?? SPEC_DEFAULT_DURATION);
  try {
    const signal = running.signal;
    const result = await withKey(() => {
      started = performance.now(); // again after a key was asked for
      return generate(params, {
        signal,
        onProgress: (percent) => showProgress(percent, percent < 100 ? `Generating… ${percent}%` : "Finishing…"),
        onAudio,
      });
    });
    const settings = { ...params };
    delete settings.audio_prompt; // megabytes, and a file box cannot be refilled anyway
    const clip = {
      prompt: params.description.trim(),
      params: settings,
      audio: new Blob([result.bytes], { type: result.mimeType }),
      format: result.format,
      seed: result.seed,
      seconds: result.seconds,
      channels: result.channels,
      sampleRate: result.sampleRate,
      generationSeconds: (performance.now() - started) / 1000,
      createdAt: Date.now(),
    };
    showClip(await remember(clip), await samplesOf(result.bytes, clip));
  } catch (error) {
    stopLive();
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

function fileName(prompt, format) {
  const slug = prompt.toLowerCase().replace(/[^\p{L}\p{N}]+/gu, "-").replace(/^-+|-+$/g, "").slice(0, 60);
  return `${slug.replace(/-+$/, "") || "musicgen"}.${format}`;
}

/** Clips kept by earlier versions of this page are WAVs under `wav`. */
function audioOf(clip) {
  return { blob: clip.audio ?? clip.wav, format: clip.format ?? "wav" };
}

/** The clip's samples for the waveform, or null where this browser cannot decode its format. */
function samplesOf(bytes, clip) {
  return decodeAudio(bytes, audioOf(clip).format, clip.sampleRate).catch(() => null);
}

function describe(clip) {
  const channels = clip.channels === 1 ? "mono" : clip.channels === 2 ? "stereo" : `${clip.channels} channels`;
  const when = new Date(clip.createdAt).toLocaleString([], { dateStyle: "short", timeStyle: "short" });
  return `${clip.seconds.toFixed(1)} s · ${channels} · ${clip.sampleRate / 1000} kHz · ` +
    `made in ${clip.generationSeconds.toFixed(1)} s · ${when}`;
}

function showClip(clip, samples) {
  const { blob, format } = audioOf(clip);
  if (shownUrl) URL.revokeObjectURL(shownUrl);
  shownUrl = URL.createObjectURL(blob);
  player.src = shownUrl;
  const download = $("#download");
  download.href = shownUrl;
  download.download = fileName(clip.prompt, format);
  download.textContent = `Download ${format.toUpperCase()}`;
  $("#result-title").textContent = clip.prompt;
  $("#result-meta").textContent = describe(clip);
  shownSeed = clip.seed ?? null;
  $("#seed-value").textContent = shownSeed ?? "";
  $("#result-seed").hidden = shownSeed === null;
  $("#result").hidden = false;
  waveform.show(samples);
  for (const item of document.querySelectorAll("#history li")) {
    item.setAttribute("aria-current", String(item.dataset.id === String(clip.id)));
  }
}

async function open(clip) {
  const bytes = new Uint8Array(await audioOf(clip).blob.arrayBuffer());
  showClip(clip, await samplesOf(bytes, clip));
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
    const box = name === "description" ? null : input(name);
    if (box?.type === "checkbox") box.checked = value;
    else if (box) box.value = value;
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
player.addEventListener("play", stopLive); // the finished clip takes over from the live stream
description.addEventListener("input", countChars);
description.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
    event.preventDefault();
    run();
  }
});
document.addEventListener("keydown", (event) => {
  if (event.key === "Escape" && running && !keyDialog.open) running.abort();
});
form.addEventListener("input", (event) => event.target.removeAttribute?.("aria-invalid"));
slider.addEventListener("input", () => (duration.value = slider.value));
duration.addEventListener("input", () => (slider.value = duration.value));
$("#reset").addEventListener("click", resetAdvanced);
input("audio_prompt").addEventListener("change", syncAudioPrompt);
$("#clear-audio-prompt").addEventListener("click", () => {
  input("audio_prompt").value = "";
  syncAudioPrompt();
});
$("#reuse-seed").addEventListener("click", () => {
  input("seed").value = shownSeed;
  input("seed").removeAttribute("aria-invalid");
  $("#advanced").open = true;
  input("seed").focus();
});
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
$("#key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const key = keyInput.value.trim();
  if (!key) return showKeyError("Enter the key first.");
  if (/[^\x21-\x7e]/.test(key)) return showKeyError("An API key is plain ASCII text, without spaces.");
  setApiKey(key);
  answerKey(true);
});
$("#key-cancel").addEventListener("click", () => answerKey(false));
keyDialog.addEventListener("close", () => keyDialog.open || answerKey(false)); // Esc; a no-op after answerKey
forgetKeyButton.addEventListener("click", () => {
  forgetApiKey();
  syncForgetKey();
  say("info", "API key forgotten.", "This tab will ask for it again when the server wants it.");
  description.focus();
});

syncForgetKey();
applyLimits(await withKey(fetchLimits).catch(() => null));
refreshBadge();
renderHistory().catch(historyUnavailable);
