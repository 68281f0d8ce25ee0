// Plays a piece while it is being made: the stream's audio chunks (16-bit PCM, channels interleaved) are scheduled
// back to back on one AudioContext, so playback has no gaps as long as chunks arrive faster than they play.

const LEAD_S = 0.1; // the first chunk starts this far ahead, so scheduling it never lands in the past

export class StreamPlayer {
  constructor() {
    this.context = new AudioContext();
    this.startAt = null; // context time at which offset 0 plays
    this.received = 0; // seconds of audio scheduled
    this.ended = false;
    this.sources = new Set();
  }

  /** Schedule one chunk ({pcm: Uint8Array, offset, duration, sampleRate, channels}) right after the one before. */
  push({ pcm, offset, sampleRate, channels }) {
    const samples = new Int16Array(pcm.buffer, pcm.byteOffset, pcm.byteLength / 2);
    const frames = samples.length / channels;
    const buffer = this.context.createBuffer(channels, frames, sampleRate);
    for (let c = 0; c < channels; c++) {
      const out = buffer.getChannelData(c);
      for (let i = 0; i < frames; i++) out[i] = samples[i * channels + c] / 32768;
    }
    if (this.startAt === null) this.startAt = this.context.currentTime + LEAD_S - offset;
    // A chunk that arrives late (the server fell behind playback) plays as soon as it can: the rest shifts with it.
    const when = Math.max(this.startAt + offset, this.context.currentTime);
    this.startAt = when - offset;
    const source = this.context.createBufferSource();
    source.buffer = buffer;
    source.connect(this.context.destination);
    source.onended = () => this.sources.delete(source);
    source.start(when);
    this.sources.add(source);
    this.received = offset + frames / sampleRate;
  }

  /** Seconds of the piece played so far (0 before the first chunk). */
  played() {
    if (this.startAt === null) return 0;
    return Math.min(this.received, Math.max(0, this.context.currentTime - this.startAt));
  }

  /** Whether sound is coming out now: a chunk has started and the last one has not finished. */
  playing() {
    return this.startAt !== null && !this.ended && this.played() < this.received;
  }

  /** Stop at once (Cancel, a new generation) and let the context go. */
  stop() {
    this.ended = true;
    for (const source of this.sources) source.stop();
    this.sources.clear();
    this.context.close();
  }
}
