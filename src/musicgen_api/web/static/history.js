// This browser's recent clips, kept in IndexedDB (a 30-second WAV is about 2 MB, too big for localStorage's
// string quota). Only the newest KEEP clips are kept; nothing is sent anywhere.

const DATABASE = "musicgen-api";
const STORE = "clips";
const KEEP = 12;

let opened = null;

function database() {
  opened ??= new Promise((resolve, reject) => {
    const request = indexedDB.open(DATABASE, 1);
    request.onupgradeneeded = () => request.result.createObjectStore(STORE, { keyPath: "id", autoIncrement: true });
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
  });
  return opened;
}

function done(request) {
  return new Promise((resolve, reject) => {
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
  });
}

async function store(mode) {
  return (await database()).transaction(STORE, mode).objectStore(STORE);
}

/** All kept clips, newest first. */
export async function listClips() {
  const clips = await done((await store("readonly")).getAll());
  return clips.reverse();
}

/** Keep `clip` ({prompt, params, audio: Blob, format, seed, seconds, channels, sampleRate, generationSeconds,
 * createdAt}); returns it with its id. Drops the oldest beyond KEEP. */
export async function addClip(clip) {
  const id = await done((await store("readwrite")).add(clip));
  const ids = await done((await store("readonly")).getAllKeys());
  const clips = await store("readwrite");
  await Promise.all(ids.slice(0, Math.max(0, ids.length - KEEP)).map((old) => done(clips.delete(old))));
  return { ...clip, id };
}

export async function deleteClip(id) {
  await done((await store("readwrite")).delete(id));
}

export async function clearClips() {
  await done((await store("readwrite")).clear());
}
