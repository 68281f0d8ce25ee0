// Reads the server's WAV (16-bit PCM, any channel count) directly: its format for the clip's description, and
// per-column peaks for the waveform picture. Parsing the bytes ourselves draws the picture the moment the clip
// arrives and the same way in every browser, without decoding audio through Web Audio.

function tag(view, offset) {
  return String.fromCharCode(...[0, 1, 2, 3].map((i) => view.getUint8(offset + i)));
}

/** {channels, sampleRate, frames, seconds, view, dataOffset} of a PCM WAV; throws on anything else. */
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
      const length = Math.min(size, view.byteLength - offset - 8);
      const frames = Math.floor(length / (2 * format.channels));
      return { ...format, frames, seconds: frames / format.sampleRate, view, dataOffset: offset + 8 };
    }
    offset += 8 + size + (size % 2);
  }
  throw new Error("WAV without a data chunk");
}

/** `columns` [min, max] pairs over all channels, scaled so the loudest peak reaches ±1. */
export function peaks(wav, columns) {
  const { view, dataOffset, frames, channels } = wav;
  const result = new Float32Array(columns * 2);
  let loudest = 1;
  for (let column = 0; column < columns; column++) {
    const start = Math.floor((column * frames) / columns);
    const end = Math.max(start + 1, Math.floor(((column + 1) * frames) / columns));
    let low = 0;
    let high = 0;
    for (let frame = start; frame < end && frame < frames; frame++) {
      for (let channel = 0; channel < channels; channel++) {
        const sample = view.getInt16(dataOffset + 2 * (frame * channels + channel), true);
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
