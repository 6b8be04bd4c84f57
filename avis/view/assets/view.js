/* avis view: the page's code.
 *
 * Data: the JSON block in index.html (runs, categories, the video list, the per-instance table) and one
 * data/<n>.js per video, loaded on demand (masks as COCO compressed RLE strings, decoded here).
 * Time: one <video> plays the pictures and the sound; every panel redraws the video's current frame and the
 * masks of the annotated frame in effect at the presented frame's time (the last annotated time at or before
 * it, held for one annotation interval, as the overlay export does).
 * Safety: every string from the data reaches the document through textContent or canvas text, never as markup.
 */
"use strict";
(function () {
  const DATA = JSON.parse(document.getElementById("avis-data").textContent);
  const ALPHA = Math.round(0.45 * 255); // mask fill opacity, as the overlay export
  const EPS = 1e-6;
  const DPR = window.devicePixelRatio || 1;
  const $ = (id) => document.getElementById(id);
  const catName = new Map(DATA.categories.map((c) => [c.id, String(c.name)]));
  const S = {
    n: -1, v: null, step: 1 / 6, frame: -1, mediaTime: null, version: 0,
    threshold: DATA.threshold, labels: true, width: 320,
    hiddenCats: new Set(), hiddenTracks: new Set(), panels: [], att: [], overlays: new Map(),
  };
  const loaded = new Map();
  const waiting = new Map();
  const video = document.createElement("video");
  video.controls = true;
  video.preload = "auto";
  video.playsInline = true;

  // ------------------------------------------------------------------------------------------- helpers
  function el(tag, props, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (k === "text") e.textContent = v;
      else if (k === "class") e.className = v;
      else if (k === "title") e.title = v;
      else e.dataset[k] = v;
    }
    for (const c of children) e.append(c);
    return e;
  }
  const fmt = (x, d = 3) => (x === null || x === undefined ? "–" : Number(x).toFixed(d));
  const pct = (x) => (x === null || x === undefined || x < 0 ? "–" : (100 * x).toFixed(1));
  const rgb = (c) => `rgb(${c.map((x) => Math.max(0, Math.min(255, Number(x) | 0))).join(",")})`;
  const category = (id) => (catName.has(id) ? catName.get(id) : String(id));
  function swatch(c) {
    const s = el("span", { class: "swatch" });
    s.style.background = rgb(c);
    return s;
  }

  // COCO compressed RLE (pycocotools' rleFrString): counts of alternating 0 / 1 runs, column-major.
  function rleCounts(s) {
    const counts = [];
    let p = 0;
    while (p < s.length) {
      let x = 0, k = 0, more = 1;
      while (more) {
        if (p >= s.length || k > 6) return counts; // cut short or beyond 32 bits: malformed, stop here
        const c = s.charCodeAt(p) - 48;
        x |= (c & 0x1f) << (5 * k);
        more = c & 0x20;
        p++;
        k++;
        if (!more && (c & 0x10)) x |= -1 << (5 * k);
      }
      if (counts.length > 2) x += counts[counts.length - 2];
      counts.push(x);
    }
    return counts;
  }

  // Fills buf (row-major h x w) with the mask; returns its bounding box [x0, y0, x1, y1] (null when empty),
  // so that drawing visits only that box.
  function decodeInto(counts, buf, h, w) {
    buf.fill(0);
    const n = h * w;
    let pos = 0, on = 0, x0 = w, y0 = h, x1 = -1, y1 = -1;
    for (let i = 0; i < counts.length && pos < n; i++) {
      const len = Math.max(0, Math.min(counts[i], n - pos)); // malformed counts cannot run past the frame
      if (on && len) {
        for (let p = pos; p < pos + len; p++) { const x = (p / h) | 0; buf[(p - x * h) * w + x] = 1; }
        const a = (pos / h) | 0, b = ((pos + len - 1) / h) | 0; // first and last column of the run
        x0 = Math.min(x0, a); x1 = Math.max(x1, b);
        if (a === b) { y0 = Math.min(y0, pos - a * h); y1 = Math.max(y1, pos + len - 1 - a * h); }
        else { y0 = 0; y1 = h - 1; }
      }
      pos += len;
      on ^= 1;
    }
    return x1 < 0 ? null : [x0, y0, x1, y1];
  }

  // ------------------------------------------------------------------------------------------- layers
  // A layer is the ground truth ("gt") or run r ("r0", "r1", ...); an item is a GT instance or a track.
  function layerItems(layer) {
    const v = S.v;
    if (layer === "gt") return v.gt;
    return v.runs[Number(layer.slice(1))].tracks;
  }
  const short = (s) => (s.length > 32 ? `${s.slice(0, 31)}…` : s);
  function itemText(layer, it) {
    if (layer === "gt") return `${it.label} ${short(category(it.category))}${it.crowd ? " (crowd)" : ""}`;
    return `${it.track} ${short(category(it.category))} ${fmt(it.score, 2)}`;
  }
  function visible(layer, it) {
    if (S.hiddenCats.has(it.category) || S.hiddenTracks.has(`${layer}:${it.key}`)) return false;
    return layer === "gt" || (it.score !== null && it.score >= S.threshold - EPS);
  }

  // The masks of one layer at annotated frame i, drawn once into an offscreen canvas (alpha-blended onto the
  // frame by drawImage) with the label positions; cached until the frame or a toggle changes.
  function overlay(layer, i) {
    const key = `${i}:${S.version}`;
    const hit = S.overlays.get(layer);
    if (hit && hit.key === key) return hit;
    const v = S.v, w = v.width, h = v.height;
    const img = new ImageData(w, h);
    const d = img.data;
    const m = new Uint8Array(w * h);
    const labels = [];
    // best score drawn last (on top); the ground truth in file order
    const items = layer === "gt" ? v.gt.slice() : layerItems(layer).slice().reverse();
    for (const it of items) {
      const s = it.segs[i];
      if (!s || !visible(layer, it)) continue;
      const box = decodeInto(rleCounts(String(s)), m, h, w);
      if (!box) continue;
      const [r, g, b] = it.color.map((x) => Number(x) | 0);
      let top = -1, left = w;
      for (let y = box[1]; y <= box[3]; y++) {
        for (let x = box[0]; x <= box[2]; x++) {
          const q = y * w + x;
          if (!m[q]) continue;
          if (top < 0) top = y;
          if (x < left) left = x;
          const edge = x === 0 || y === 0 || x === w - 1 || y === h - 1 || !m[q - 1] || !m[q + 1] || !m[q - w] || !m[q + w];
          const o = 4 * q;
          d[o] = r; d[o + 1] = g; d[o + 2] = b; d[o + 3] = edge ? 255 : ALPHA;
        }
      }
      if (top >= 0) labels.push({ x: left, y: top, text: itemText(layer, it), color: [r, g, b] });
    }
    const canvas = document.createElement("canvas");
    canvas.width = w;
    canvas.height = h;
    canvas.getContext("2d").putImageData(img, 0, 0);
    const out = { key, canvas, labels: labels.reverse() };
    S.overlays.set(layer, out);
    return out;
  }

  // Labels are drawn at the display's resolution (readable whatever the video's size), above each mask's
  // top-left corner; a label that would cover an earlier (better) one moves below it.
  function drawLabels(ctx, labels, sx, sy) {
    const size = Math.round(12 * DPR);
    ctx.font = `${size}px sans-serif`;
    ctx.textBaseline = "top";
    const placed = [];
    for (const l of labels) {
      const tw = ctx.measureText(l.text).width + 4 * DPR, th = size + 3 * DPR;
      const x = Math.min(Math.max(0, l.x * sx), Math.max(0, ctx.canvas.width - tw));
      let y = Math.max(0, l.y * sy - th - DPR);
      for (let tries = 0; tries < 20; tries++) {
        const hitRect = placed.find((p) => x < p.x + p.w && p.x < x + tw && y < p.y + p.h && p.y < y + th);
        if (!hitRect) break;
        y = hitRect.y + hitRect.h + DPR;
      }
      placed.push({ x, y, w: tw, h: th });
      ctx.fillStyle = rgb(l.color);
      ctx.fillRect(x, y, tw, th);
      const [r, g, b] = l.color;
      ctx.fillStyle = 0.299 * r + 0.587 * g + 0.114 * b > 110 ? "#000" : "#fff";
      ctx.fillText(l.text, x + 2 * DPR, y + 2 * DPR);
    }
  }

  // The video's current frame over the whole canvas (media padded to even sizes: the padding is cut off).
  function drawFrame(ctx) {
    const v = S.v, cw = ctx.canvas.width, ch = ctx.canvas.height;
    if (video.readyState >= 2) {
      const [mh, mw] = v.media_size;
      ctx.imageSmoothingEnabled = true;
      ctx.drawImage(video, 0, 0, mw, mh, 0, 0, cw, ch);
    } else {
      ctx.fillStyle = "#000";
      ctx.fillRect(0, 0, cw, ch);
    }
  }

  // Canvases are sized to their display size (times the device pixel ratio): frames are scaled smoothly,
  // masks pixel-exact (no smoothing), labels at a fixed readable size.
  function sizeCanvas(c) {
    const h = Math.round((S.width * S.v.height) / S.v.width);
    c.width = Math.round(S.width * DPR);
    c.height = Math.round(h * DPR);
    c.style.width = `${S.width}px`;
    c.style.height = `${h}px`;
  }

  // ------------------------------------------------------------------------------------------- time
  function frameAt(t) {
    const T = S.v ? S.v.times : [];
    let lo = 0, hi = T.length - 1, i = -1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      if (T[mid] <= t + EPS) { i = mid; lo = mid + 1; } else hi = mid - 1;
    }
    if (i < 0) return -1;
    const end = i + 1 < T.length ? T[i + 1] : T[i] + S.step + 2e-3;
    return t < end - EPS ? i : -1;
  }

  function render() {
    if (!S.v) return;
    const t = S.mediaTime !== null ? S.mediaTime : video.currentTime;
    const i = frameAt(t);
    S.frame = i;
    $("clock").textContent = `frame ${i < 0 ? "–" : i + 1}/${S.v.times.length} · ${t.toFixed(3)} s`;
    for (const p of S.panels) {
      drawFrame(p.ctx);
      if (i < 0) continue;
      const ov = overlay(p.layer, i), cw = p.canvas.width, ch = p.canvas.height;
      p.ctx.imageSmoothingEnabled = false;
      p.ctx.drawImage(ov.canvas, 0, 0, S.v.width, S.v.height, 0, 0, cw, ch);
      if (S.labels) drawLabels(p.ctx, ov.labels, cw / S.v.width, ch / S.v.height);
    }
    for (const a of S.att) drawAttention(a, i);
  }

  function invalidate() {
    S.version++;
    render();
  }

  if ("requestVideoFrameCallback" in HTMLVideoElement.prototype) {
    const onFrame = (now, meta) => { S.mediaTime = meta.mediaTime; render(); video.requestVideoFrameCallback(onFrame); };
    video.requestVideoFrameCallback(onFrame);
  } else {
    const loop = () => { render(); if (!video.paused) requestAnimationFrame(loop); };
    video.addEventListener("play", () => requestAnimationFrame(loop));
  }
  for (const ev of ["seeking", "seeked", "loadeddata", "pause", "ended"]) {
    video.addEventListener(ev, () => { S.mediaTime = null; render(); });
  }

  function seekFrame(i) {
    if (!S.v || !S.v.times.length) return Promise.resolve();
    i = Math.max(0, Math.min(S.v.times.length - 1, i));
    const t = S.v.times[i] + Math.min(2e-3, S.step / 4);
    if (video.error || video.readyState < 1) { // nothing to seek in: show that frame's masks anyway
      S.mediaTime = t;
      render();
      return Promise.resolve();
    }
    return new Promise((resolve) => {
      video.addEventListener("seeked", () => resolve(), { once: true });
      video.currentTime = t;
    });
  }

  // ------------------------------------------------------------------------------------------- attention
  const KIND_TEXT = {
    ref_to_target: ["reference → target", "reference tokens (K × K grid): each one's attention over the target frame"],
    audio_to_target: ["audio → target", "audio tokens, oldest first (the frame's own window last)"],
  };
  function setupAttention() {
    const box = $("attention");
    box.replaceChildren();
    S.att = [];
    S.v.runs.forEach((run, r) => {
      if (!run.attention) return;
      const sec = el("div", { class: "att-run" },
        el("h3", { text: `${DATA.runs[r].label}: attention of the last fusion layer (head-averaged)` }));
      for (const kind of Object.keys(KIND_TEXT)) {
        const a = run.attention[kind];
        if (!a) continue;
        const img = new Image();
        img.src = String(a.file);
        const n = a.tokens, cols = kind === "ref_to_target" && Number.isInteger(Math.sqrt(n)) ? Math.sqrt(n) : n;
        const rows = Math.ceil(n / cols);
        const s = Math.max(1, Math.ceil(64 / Math.max(a.w, a.h)));
        const pca = el("canvas", { run: r, kind, role: "pca" });
        sizeCanvas(pca);
        const grid = el("canvas", { run: r, kind, role: "tokens" });
        grid.width = cols * (a.w * s + 2); grid.height = rows * (a.h * s + 2);
        const [title, sub] = KIND_TEXT[kind];
        sec.append(el("div", { class: "att-kind" },
          el("figure", {}, pca, el("figcaption", { text: `${title}: the ${n} tokens' maps reduced to RGB by PCA, on the frame` })),
          el("figure", {}, grid, el("figcaption", { text: sub }))));
        const entry = { a, img, pca, grid, cols, s, ready: false };
        img.addEventListener("load", () => { entry.ready = true; drawAttention(entry, S.frame); });
        S.att.push(entry);
      }
      box.append(sec);
    });
  }

  function drawAttention(e, i) {
    const ctx = e.pca.getContext("2d"), g = e.grid.getContext("2d");
    drawFrame(ctx);
    g.fillStyle = "#000";
    g.fillRect(0, 0, e.grid.width, e.grid.height);
    if (!e.ready || i < 0 || i >= e.a.frames) return;
    const { w, h, tokens } = e.a;
    ctx.save();
    ctx.globalAlpha = 0.65;
    ctx.imageSmoothingEnabled = true;
    ctx.drawImage(e.img, 0, i * h, w, h, 0, 0, e.pca.width, e.pca.height);
    ctx.restore();
    g.imageSmoothingEnabled = false;
    for (let k = 0; k < tokens; k++) {
      const cx = (k % e.cols) * (w * e.s + 2), cy = Math.floor(k / e.cols) * (h * e.s + 2);
      g.drawImage(e.img, (1 + k) * w, i * h, w, h, cx, cy, w * e.s, h * e.s);
    }
  }

  // ------------------------------------------------------------------------------------------- video setup
  function panel(layer, caption) {
    const canvas = el("canvas", { layer });
    sizeCanvas(canvas);
    const fig = el("figure", { class: "panel", layer }, canvas, el("figcaption", { text: caption }));
    fig.style.width = `${S.width}px`;
    S.panels.push({ layer, canvas, ctx: canvas.getContext("2d") });
    return fig;
  }

  function setupPanels() {
    const v = S.v;
    S.panels = [];
    S.overlays.clear();
    video.style.width = `${S.width}px`;
    const src = el("figure", { class: "panel", layer: "source" }, video,
      el("figcaption", { text: `${v.name} · ${v.sound ? "with sound" : "no sound"} · ${v.note}` }));
    src.style.width = `${S.width}px`;
    const panels = [src, panel("gt", `ground truth (${DATA.gt})`)];
    DATA.runs.forEach((run, r) => panels.push(panel(`r${r}`, run.label)));
    $("panels").replaceChildren(...panels);
  }

  function setupTracks() {
    const box = $("tracks");
    box.replaceChildren();
    const layers = [["gt", "ground truth"], ...DATA.runs.map((run, r) => [`r${r}`, run.label])];
    for (const [layer, name] of layers) {
      const isGt = layer === "gt";
      const head = el("tr", {}, ...(isGt ? ["show", "", "instance", "category", "frames"]
        : ["show", "", "track", "category", "score", "IoU", "GT"]).map((h) => el("th", { text: h })));
      const body = el("tbody");
      for (const it of layerItems(layer)) {
        const box2 = el("input", { layer, key: it.key });
        box2.type = "checkbox";
        box2.checked = !S.hiddenTracks.has(`${layer}:${it.key}`);
        box2.addEventListener("change", () => {
          const k = `${layer}:${it.key}`;
          if (box2.checked) S.hiddenTracks.delete(k); else S.hiddenTracks.add(k);
          invalidate();
        });
        const frames = it.segs.filter((s) => s).length;
        const cells = isGt
          ? [it.label + (it.crowd ? " (crowd)" : ""), category(it.category), String(frames)]
          : [String(it.track), category(it.category), fmt(it.score, 3), it.iou === null ? "unmatched" : fmt(it.iou, 3),
            it.gt === null ? "–" : `#${it.gt}`];
        const row = el("tr", { layer, key: it.key, score: isGt ? "" : String(it.score) },
          el("td", {}, box2), el("td", {}, swatch(it.color)), ...cells.map((c) => el("td", { text: c })));
        body.append(row);
      }
      const table = el("table", { class: "grid tracks", layer }, el("caption", { text: name }), el("thead", {}, head), body);
      box.append(table);
    }
    markRows();
  }

  function markRows() {
    for (const row of document.querySelectorAll("#tracks tbody tr")) {
      const layer = row.dataset.layer;
      const below = layer !== "gt" && !(Number(row.dataset.score) >= S.threshold - EPS);
      row.classList.toggle("below", below);
    }
  }

  function setupCategories() {
    const box = $("categories");
    box.replaceChildren(el("span", { text: "categories:" }));
    for (const c of DATA.categories) {
      const input = el("input", { category: c.id });
      input.type = "checkbox";
      input.checked = !S.hiddenCats.has(c.id);
      input.addEventListener("change", () => {
        if (input.checked) S.hiddenCats.delete(c.id); else S.hiddenCats.add(c.id);
        invalidate();
      });
      box.append(el("label", {}, input, document.createTextNode(` ${c.name}`)));
    }
  }

  function loadData(n) {
    if (loaded.has(n)) return Promise.resolve(loaded.get(n));
    return new Promise((resolve, reject) => {
      waiting.set(n, resolve);
      const s = document.createElement("script");
      s.src = `data/${Number(n)}.js`;
      s.addEventListener("error", () => reject(new Error(`cannot load data/${n}.js`)));
      document.head.append(s);
    });
  }

  function select(n) {
    n = Number(n);
    S.n = n;
    for (const li of document.querySelectorAll("#videos li")) li.classList.toggle("current", Number(li.dataset.n) === n);
    for (const tr of document.querySelectorAll("#instances tbody tr")) tr.classList.toggle("current-video", Number(tr.dataset.n) === n);
    $("status").textContent = "loading…";
    return loadData(n).then((v) => new Promise((resolve) => {
      if (S.n !== n) { resolve(); return; }
      if (pending) pending(); // a video selected before the previous one loaded: that one is done
      S.v = v;
      const d = v.times.slice(1).map((t, k) => t - v.times[k]).sort((a, b) => a - b);
      S.step = d.length ? d[d.length >> 1] : 1 / 6;
      S.mediaTime = null;
      setupPanels();
      setupTracks();
      setupAttention();
      filterInstances();
      pending = resolve;
      video.src = String(v.media);
      video.load();
      render();
    })).catch((e) => { $("status").textContent = String(e.message || e); });
  }

  // The media of the selected video loaded (or cannot play: the masks are then drawn on black, and the
  // frame buttons still step through the annotated frames).
  let pending = null;
  function mediaReady(ok) {
    if (!S.v) return;
    const v = S.v;
    $("status").textContent = ok ? `${v.name} (video id ${v.id}) · ${v.times.length} annotated frames`
      : `this browser cannot play ${v.media}: masks on a black frame`;
    render();
    if (pending) { const r = pending; pending = null; r(); }
  }
  video.addEventListener("loadeddata", () => mediaReady(true));
  video.addEventListener("error", () => mediaReady(false));

  // ------------------------------------------------------------------------------------------- summary tables
  function setupRuns() {
    const keys = ["AP", "AP50", "AP75", "AR1", "AR10"];
    const head = el("tr", {}, ...["run", ...keys, "FPS", "attention"].map((k) => el("th", { text: k })));
    const rows = DATA.runs.map((run) => el("tr", {},
      el("td", { text: run.label }),
      ...keys.map((k) => el("td", { class: "num", text: pct(run.metrics ? run.metrics[k] : null) })),
      el("td", { class: "num", text: run.timing && run.timing.fps ? fmt(run.timing.fps, 1) : "–" }),
      el("td", { text: run.attention ? "kept" : "–" })));
    $("runs").replaceChildren(el("thead", {}, head), el("tbody", {}, ...rows));
  }

  function setupVideos() {
    const list = $("videos");
    for (const v of DATA.videos) {
      const stats = [`${v.gt} GT`, ...DATA.runs.map((run, r) => `${run.label}: ${v.tracks[r]} tracks, mIoU ${fmt(v.miou[r], 2)}`)];
      const li = el("li", { n: v.n, title: `video id ${v.id}` }, el("div", { text: v.name }), el("div", { class: "stats", text: stats.join(" · ") }));
      li.addEventListener("click", () => select(v.n));
      list.append(li);
    }
  }

  // Instance table: one row per non-crowd GT instance; per run the IoU / score / track of its match
  // (misses count as IoU 0 in the differences, as in avis ttest).
  const columns = [
    { name: "video", get: (r) => DATA.videos[r.n].name, text: true },
    { name: "instance", get: (r) => r.label, text: true },
    { name: "category", get: (r) => category(r.category), text: true },
  ];
  DATA.runs.forEach((run, k) => {
    columns.push({ name: `IoU · ${run.label}`, get: (r) => r.runs[k].iou, iou: true });
    columns.push({ name: `score · ${run.label}`, get: (r) => r.runs[k].score });
    columns.push({ name: `track · ${run.label}`, get: (r) => r.runs[k].track, digits: 0 });
  });
  DATA.runs.slice(1).forEach((run, j) => {
    columns.push({ name: `ΔIoU ${DATA.runs[0].label} − ${run.label}`, get: (r) => (r.runs[0].iou || 0) - (r.runs[j + 1].iou || 0) });
  });
  const sort = { col: -1, dir: 1 };

  function setupInstances() {
    const head = el("tr", {}, ...columns.map((c, k) => {
      const th = el("th", { col: k, text: c.name });
      th.addEventListener("click", () => { sort.dir = sort.col === k ? -sort.dir : 1; sort.col = k; fillInstances(); });
      return th;
    }));
    $("instances").replaceChildren(el("thead", {}, head), el("tbody"));
    $("only-video").addEventListener("change", filterInstances);
    fillInstances();
  }

  function fillInstances() {
    const rows = DATA.instances.slice();
    if (sort.col >= 0) {
      const c = columns[sort.col];
      rows.sort((a, b) => {
        const x = c.get(a), y = c.get(b);
        if (x === null || x === undefined) return y === null || y === undefined ? 0 : 1; // missing values last
        if (y === null || y === undefined) return -1;
        return sort.dir * (c.text ? String(x).localeCompare(String(y)) : x - y);
      });
    }
    for (const th of document.querySelectorAll("#instances th")) {
      th.classList.toggle("asc", Number(th.dataset.col) === sort.col && sort.dir > 0);
      th.classList.toggle("desc", Number(th.dataset.col) === sort.col && sort.dir < 0);
    }
    const body = el("tbody");
    for (const r of rows) {
      const tr = el("tr", { n: r.n, key: r.key }, ...columns.map((c) => {
        const x = c.get(r);
        if (c.text) return el("td", { text: String(x) });
        if (c.iou && (x === null || x === undefined)) return el("td", { class: "num miss", text: "miss" });
        return el("td", { class: "num", text: fmt(x, c.digits === undefined ? 3 : c.digits) });
      }));
      tr.classList.toggle("current-video", r.n === S.n);
      tr.addEventListener("click", () => select(r.n).then(() => seekFrame(r.first)));
      body.append(tr);
    }
    $("instances").querySelector("tbody").replaceWith(body);
    filterInstances();
  }

  function filterInstances() {
    const only = $("only-video").checked;
    for (const tr of document.querySelectorAll("#instances tbody tr")) {
      tr.hidden = only && Number(tr.dataset.n) !== S.n;
      tr.classList.toggle("current-video", Number(tr.dataset.n) === S.n);
    }
  }

  // ------------------------------------------------------------------------------------------- controls
  function setupControls() {
    const th = $("threshold");
    th.value = String(S.threshold);
    $("threshold-value").textContent = fmt(S.threshold, 2);
    th.addEventListener("input", () => {
      S.threshold = Number(th.value);
      $("threshold-value").textContent = fmt(S.threshold, 2);
      markRows();
      invalidate();
    });
    $("labels").addEventListener("change", () => { S.labels = $("labels").checked; render(); });
    const size = $("zoom");
    size.value = String(S.width);
    size.addEventListener("change", () => {
      S.width = Number(size.value);
      video.style.width = `${S.width}px`;
      if (!S.v) return;
      for (const c of document.querySelectorAll("#panels canvas, #attention canvas[data-role=pca]")) sizeCanvas(c);
      for (const f of document.querySelectorAll("#panels figure")) f.style.width = `${S.width}px`;
      render();
    });
    $("prev").addEventListener("click", () => seekFrame(S.frame < 0 ? 0 : S.frame - 1));
    $("next").addEventListener("click", () => seekFrame(S.frame < 0 ? 0 : S.frame + 1));
  }

  window.AVIS = {
    loaded(n, data) { loaded.set(n, data); const r = waiting.get(n); if (r) { waiting.delete(n); r(data); } },
    select, seekFrame, frameAt, render, state: S, video,
  };

  document.title = `${DATA.title} · avis view`;
  $("title").textContent = DATA.title;
  setupRuns();
  setupVideos();
  setupCategories();
  setupControls();
  setupInstances();
  if (DATA.videos.length) select(DATA.videos[0].n);
  else $("status").textContent = "no videos";
})();
