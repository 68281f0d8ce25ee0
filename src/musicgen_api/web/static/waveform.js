// The waveform picture: the clip's peaks on a canvas, the played part in the accent colour, click or tap to seek.
// Redrawn at the canvas's real pixel size (sharp on high-density screens) whenever it is resized.

import { peaks } from "./wav.js";

const BAR = 3; // CSS pixels per bar, gap included

export class Waveform {
  constructor(canvas, audio) {
    this.canvas = canvas;
    this.audio = audio;
    this.samples = null;
    this.bars = null;
    new ResizeObserver(() => this.layout()).observe(canvas);
    for (const name of ["timeupdate", "seeked", "loadedmetadata", "ended"]) {
      audio.addEventListener(name, () => this.draw());
    }
    audio.addEventListener("play", () => this.follow());
    canvas.addEventListener("click", (event) => this.seek(event));
  }

  /** Draw `samples` (see wav.js); null hides the picture (a clip this browser cannot decode). */
  show(samples) {
    this.samples = samples;
    this.bars = null;
    this.canvas.hidden = !samples;
    this.layout();
  }

  layout() {
    const ratio = window.devicePixelRatio || 1;
    const width = this.canvas.clientWidth;
    if (!width || !this.samples) return;
    this.canvas.width = Math.round(width * ratio);
    this.canvas.height = Math.round(this.canvas.clientHeight * ratio);
    this.bars = peaks(this.samples, Math.max(1, Math.floor(width / BAR)));
    this.draw();
  }

  draw() {
    if (!this.bars) return;
    const context = this.canvas.getContext("2d");
    const { width, height } = this.canvas;
    const style = getComputedStyle(this.canvas);
    const colours = ["--accent", "--wave"].map((name) => style.getPropertyValue(name).trim());
    const count = this.bars.length / 2;
    const step = width / count;
    const played = this.audio.duration ? this.audio.currentTime / this.audio.duration : 0;
    const middle = height / 2;
    context.clearRect(0, 0, width, height);
    context.fillStyle = colours[1];
    context.fillRect(0, Math.floor(middle), width, 1);
    for (let i = 0; i < count; i++) {
      const low = this.bars[2 * i];
      const high = this.bars[2 * i + 1];
      const top = middle - Math.max(high, 0.02) * (middle - 4);
      const bottom = middle - Math.min(low, -0.02) * (middle - 4);
      context.fillStyle = (i + 0.5) / count <= played ? colours[0] : colours[1];
      context.fillRect(i * step, top, Math.max(1, step * 0.66), bottom - top);
    }
  }

  follow() {
    const tick = () => {
      this.draw();
      if (!this.audio.paused) requestAnimationFrame(tick);
    };
    requestAnimationFrame(tick);
  }

  seek(event) {
    if (!this.audio.duration) return;
    const box = this.canvas.getBoundingClientRect();
    this.audio.currentTime = ((event.clientX - box.left) / box.width) * this.audio.duration;
    if (this.audio.paused) this.audio.play().catch(() => {});
  }
}
