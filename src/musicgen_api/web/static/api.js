// The server's public API as the page uses it: limits, health, and one generation read from the SSE stream.
// POST /api/music answers with an event stream, which EventSource cannot request (it only GETs), so the stream is
// read with fetch's body reader. URLs are relative, so the page also works behind a proxy under a path prefix.
// Seeds go up to 2^63 - 1, beyond the integers a JavaScript number holds exactly, so they travel as digit strings
// here and are written into and read out of the JSON text as they are.
// A server started with --api-key answers 401 to every /api/* call but the healthcheck until it gets
// "Authorization: Bearer <key>". The key is a secret, so it lives in this tab's sessionStorage (gone with the tab,
// never shared with other tabs or written to disk by localStorage), and goes on every API call once entered.

const KEY_ITEM = "musicgen-api-key";
let keyInMemory = null; // where sessionStorage is refused (some private modes)

/** The API key this tab uses, or null. */
export function apiKey() {
  try {
    return sessionStorage.getItem(KEY_ITEM);
  } catch {
    return keyInMemory;
  }
}

export function setApiKey(key) {
  keyInMemory = key;
  try {
    sessionStorage.setItem(KEY_ITEM, key);
  } catch {
    // kept in memory only
  }
}

export function forgetApiKey() {
  keyInMemory = null;
  try {
    sessionStorage.removeItem(KEY_ITEM);
  } catch {
    // nothing kept there
  }
}

function authorized(headers = {}) {
  const key = apiKey();
  return key ? { ...headers, Authorization: `Bearer ${key}` } : headers;
}

/** The server refused to start (400 bad input, 503 busy, 500): `status`, the server's own `message` and, for a
 * 400 about one request field, that `field`'s name. */
export class Refused extends Error {
  constructor(status, message, retryAfter, field = null) {
    super(message);
    this.status = status;
    this.retryAfter = retryAfter;
    this.field = field;
  }
}

/** The server wants an API key (401): none was sent (`keySent` false) or the one sent is wrong. */
export class NeedsKey extends Error {
  constructor(message, keySent) {
    super(message);
    this.keySent = keySent;
  }
}

/** The generation started but ended with the server's {"error": ...} event. */
export class Failed extends Error {}

/** No answer, or the connection dropped before the clip arrived. */
export class Unreachable extends Error {}

/** The server's /api/info ({max_duration, max_description_chars, mbd_available, model, fields, ...}), or null.
 * Throws NeedsKey when the server wants an API key. */
export async function fetchLimits() {
  let response;
  try {
    response = await fetch("api/info", { headers: authorized() });
  } catch {
    return null;
  }
  if (response.status === 401) throw await refusal(response);
  try {
    return response.ok ? await response.json() : null;
  } catch {
    return null;
  }
}

/** "healthy", "busy" or "offline". */
export async function fetchHealth() {
  try {
    const response = await fetch("api/healthcheck", { cache: "no-store" });
    const body = await response.json();
    return body.status === "healthy" || body.status === "busy" ? body.status : "offline";
  } catch {
    return "offline";
  }
}

async function refusal(response) {
  let message = `HTTP ${response.status} ${response.statusText}`.trim();
  let field = null;
  try {
    const body = await response.json();
    message = body.error || message;
    field = typeof body.field === "string" ? body.field : null;
  } catch {
    // not JSON: keep the status line
  }
  if (response.status === 401) return new NeedsKey(message, apiKey() !== null);
  return new Refused(response.status, message, Number(response.headers.get("Retry-After")) || null, field);
}

/** The text of the stream's `data:` lines. Splits only each new chunk, so the megabytes-long last line (the base64
 * audio) costs linear time. */
async function* events(body) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let pending = [];
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    const pieces = decoder.decode(value, { stream: true }).split("\n");
    for (const piece of pieces.slice(0, -1)) {
      pending.push(piece);
      const line = pending.join("").replace(/\r$/, "");
      pending = [];
      if (line.startsWith("data: ")) yield line.slice(6);
    }
    pending.push(pieces[pieces.length - 1]);
  }
}

function decodeBase64(text) {
  const binary = atob(text);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

/** The request's JSON. A `seed` of digits goes in as the number it spells; anything else as a string, for the
 * server to refuse with its own message. */
function requestBody({ seed, ...rest }) {
  const body = JSON.stringify(rest);
  if (seed === undefined) return body;
  const number = /^-?\d+$/.test(seed) ? BigInt(seed).toString() : JSON.stringify(seed);
  return `${body.slice(0, -1)},"seed":${number}}`;
}

/** The completed event as {bytes, format, mimeType, sampleRate, channels, seconds, seed}: `seed` as the digits the
 * server wrote (base64 has no quotes, so the first `"seed":` is the key). */
function clipOf(event, text) {
  return {
    bytes: decodeBase64(event.audio_data),
    format: event.format,
    mimeType: event.mime_type,
    sampleRate: event.sample_rate,
    channels: event.channels,
    seconds: event.duration,
    seed: /"seed":\s*(\d+)/.exec(text)?.[1] ?? null,
  };
}

/** An audio event as {pcm: Uint8Array, offset, duration, sampleRate, channels}. */
function chunkOf(event) {
  return {
    pcm: decodeBase64(event.audio_chunk),
    offset: event.offset,
    duration: event.duration,
    sampleRate: event.sample_rate,
    channels: event.channels,
  };
}

/**
 * Run one generation: resolves with the clip (see clipOf), calls onProgress(percent) on the way. With `onAudio`,
 * asks for the audio as it is made (`stream_audio`) and calls onAudio(chunk) with each piece (see chunkOf).
 * Aborting `signal` closes the connection, which stops the generation on the server; the promise then rejects
 * with the AbortError.
 */
export async function generate(params, { signal, onProgress, onAudio = null }) {
  let response;
  try {
    response = await fetch("api/music", {
      method: "POST",
      headers: authorized({ "Content-Type": "application/json", Accept: "text/event-stream" }),
      body: requestBody(onAudio ? { ...params, stream_audio: true } : params),
      signal,
    });
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new Unreachable("Cannot reach the server. Check that musicgen-api is running, then try again.");
  }
  if (!response.ok) throw await refusal(response);
  try {
    for await (const text of events(response.body)) {
      const event = JSON.parse(text);
      if ("error" in event) throw new Failed(event.error);
      if (event.status === "generating") onProgress(event.progress);
      if (event.status === "audio" && onAudio) onAudio(chunkOf(event));
      if (event.status === "completed") return clipOf(event, text);
    }
  } catch (error) {
    if (error instanceof Failed || error.name === "AbortError") throw error;
    throw new Unreachable(`The connection broke (${error.message}). Check the server, then try again.`);
  }
  throw new Unreachable("The server closed the connection before the clip was ready. Check it, then try again.");
}
