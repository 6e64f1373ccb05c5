// A small two-axis line chart on a canvas: loss (left axis) and learning rate (right axis) over steps.
export class LineChart {
  constructor(canvas) { this.canvas = canvas; this.points = []; }

  set(points) { this.points = points.slice(); this.draw(); }
  add(points) { this.points.push(...points); this.draw(); }

  static range(values) {
    let lo = Math.min(...values), hi = Math.max(...values);
    if (!isFinite(lo)) return [0, 1];
    if (hi - lo < 1e-12) { const pad = Math.abs(hi) * 0.1 || 1; lo -= pad; hi += pad; }
    return [lo, hi];
  }

  draw() {
    const c = this.canvas, dpr = window.devicePixelRatio || 1;
    const w = c.clientWidth || 600, hgt = c.clientHeight || 240;
    c.width = w * dpr; c.height = hgt * dpr;
    const g = c.getContext("2d");
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.clearRect(0, 0, w, hgt);
    const pad = { l: 54, r: 64, t: 14, b: 26 };
    const pw = w - pad.l - pad.r, ph = hgt - pad.t - pad.b;
    g.font = "11px system-ui, sans-serif";
    const loss = this.points.filter((p) => p.loss !== null && p.loss !== undefined);
    const lrs = this.points.filter((p) => p.lr !== null && p.lr !== undefined);
    if (!this.points.length) { g.fillStyle = "#68707c"; g.fillText("waiting for the first step…", pad.l, pad.t + 20); return; }
    const [s0, s1] = LineChart.range(this.points.map((p) => p.step));
    const x = (s) => pad.l + ((s - s0) / (s1 - s0)) * pw;
    g.strokeStyle = "#d9dde3"; g.lineWidth = 1; g.strokeRect(pad.l, pad.t, pw, ph);
    g.fillStyle = "#68707c";
    for (let i = 0; i <= 4; i++) {
      const s = s0 + ((s1 - s0) * i) / 4;
      g.fillText(String(Math.round(s)), x(s) - 8, hgt - 8);
    }
    const series = [
      { pts: loss, key: "loss", color: "#2f6fde", side: "l", fmt: (v) => v.toFixed(4) },
      { pts: lrs, key: "lr", color: "#e0892b", side: "r", fmt: (v) => v.toExponential(2) },
    ];
    for (const s of series) {
      if (!s.pts.length) continue;
      const [v0, v1] = LineChart.range(s.pts.map((p) => p[s.key]));
      const y = (v) => pad.t + ph - ((v - v0) / (v1 - v0)) * ph;
      g.fillStyle = s.color;
      for (let i = 0; i <= 4; i++) {
        const v = v0 + ((v1 - v0) * i) / 4;
        g.fillText(s.fmt(v), s.side === "l" ? 4 : pad.l + pw + 6, y(v) + 4);
      }
      g.strokeStyle = s.color; g.lineWidth = 1.5; g.beginPath();
      s.pts.forEach((p, i) => (i ? g.lineTo(x(p.step), y(p[s.key])) : g.moveTo(x(p.step), y(p[s.key]))));
      g.stroke();
      if (s.key === "loss") for (const p of s.pts) { g.fillRect(x(p.step) - 1.5, y(p.loss) - 1.5, 3, 3); }
    }
    g.fillStyle = "#2f6fde"; g.fillText("● loss", pad.l + pw - 140, pad.t + 14);
    g.fillStyle = "#e0892b"; g.fillText("— learning rate", pad.l + pw - 90, pad.t + 14);
  }
}
