// The clip's samples, for the waveform picture and per-column peaks. The server's WAV (16-bit PCM, any channel
// count) is read directly, which draws the picture the moment the clip arrives and the same way in every browser;
// FLAC, MP3 and OGG go through the browser's own decoder (Web Audio).

function tag(view, offset) {
  return String.fromCharCode(...[0, 1, 2, 3].map((i) => view.getUint8(offset + i)));
}

/** {channels, sampleRate, frames, seconds, data: one Float32Array per channel} of a PCM WAV; throws on anything
 * else. */
export function parseWav(bytes) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (bytes.byteLength < 12 || tag(view, 0) !== "RIFF" || tag(view, 8) !== "WAVE") throw new Error("not a WAV file");
  let format = null;
  for (let offset = 12; offset + 8 <= view.byteLength; ) {
    const id = tag(view, offset);
    const size = view.getUint32(offset + 4, true);
    if (id === "fmt ") {
      format = { channels: view.getUint16(offset + 10, true), sampleRate: view.getUint32(offset + 12, true),
                 bits: view.getUint16(offset + 22, true) };
    } else if (id === "data" && format) {
      if (format.bits !== 16) throw new Error(`${format.bits}-bit WAV: only 16-bit PCM is drawn`);
      const { channels, sampleRate } = format;
      const frames = Math.floor(Math.min(size, view.byteLength - offset - 8) / (2 * channels));
      const data = Array.from({ length: channels }, () => new Float32Array(frames));
      for (let frame = 0; frame < frames; frame++) {
        for (let channel = 0; channel < channels; channel++) {
          data[channel][frame] = view.getInt16(offset + 8 + 2 * (frame * channels + channel), true) / 32768;
        }
      }
      return { channels, sampleRate, frames, seconds: frames / sampleRate, data };
    }
    offset += 8 + size + (size % 2);
  }
  throw new Error("WAV without a data chunk");
}

/** The samples of a clip in `format` (wav, flac, mp3, ogg), shaped as parseWav's; rejects when this browser cannot
 * decode it. */
export async function decodeAudio(bytes, format, sampleRate) {
  if (format === "wav") return parseWav(bytes);
  const context = new OfflineAudioContext(1, 1, sampleRate);
  const buffer = await context.decodeAudioData(bytes.slice().buffer); // decoding detaches the buffer it is given
  const data = Array.from({ length: buffer.numberOfChannels }, (_, channel) => buffer.getChannelData(channel));
  return { channels: data.length, sampleRate: buffer.sampleRate, frames: buffer.length, seconds: buffer.duration,
           data };
}

/** `columns` [min, max] pairs over all channels, scaled so the loudest peak reaches ±1. */
export function peaks(audio, columns) {
  const { data, frames } = audio;
  const result = new Float32Array(columns * 2);
  let loudest = 1 / 32768; // one 16-bit step: silence stays flat
  for (let column = 0; column < columns; column++) {
    const start = Math.floor((column * frames) / columns);
    const end = Math.min(frames, Math.max(start + 1, Math.floor(((column + 1) * frames) / columns)));
    let low = 0;
    let high = 0;
    for (const samples of data) {
      for (let frame = start; frame < end; frame++) {
        const sample = samples[frame];
        if (sample < low) low = sample;
        if (sample > high) high = sample;
      }
    }
    result[2 * column] = low;
    result[2 * column + 1] = high;
    loudest = Math.max(loudest, -low, high);
  }
  return result.map((value) => value / loudest);
}
