"use strict";
// zflight gallery: draws the run header, one card per figure key with an epoch control, and the
// callbacks' scalars as small SVG charts, from the JSON data inlined in the page. No libraries.
(function () {
  const DATA = JSON.parse(document.getElementById("gallery-data").textContent);
  mergeChunks(DATA, window.ZF_CHUNKS || []);
  const SVG = "http://www.w3.org/2000/svg";
  const COLOURS = ["#2f6fde", "#e4572e", "#17a398", "#8e6bbf", "#c9a227"];
  // ``<score>_baseline_<name>`` scalars are drawn in their score's chart as reference lines
  const BASELINE = /^(.*)_baseline_([a-z]+)$/;
  const REFERENCE = { centre: "#c0392b", random: "#7f8c8d" };
  const cards = [];

  // The epochs arrive in data files of ten epochs each (viz/gallery/NNNN.js); for one (epoch, key)
  // the row written last wins.
  function mergeChunks(data, chunks) {
    const last = (rows, at) => [...new Map(rows.map((r) => [at(r), r])).values()];
    const merge = (into, from) => {
      for (const [k, rows] of Object.entries(from)) into[k] = (into[k] || []).concat(rows);
    };
    for (const c of chunks) {
      merge(data.figures, c.figures);
      merge(data.scalars, c.scalars);
      data.metrics = data.metrics.concat(c.metrics);
    }
    for (const store of [data.figures, data.scalars]) {
      const keys = Object.keys(store).sort();
      const sorted = keys.map((k) => [k, last(store[k], (r) => r[0]).sort((a, b) => a[0] - b[0])]);
      for (const k of keys) delete store[k];
      for (const [k, rows] of sorted) store[k] = rows;
    }
    data.metrics = last(data.metrics, (r) => r.epoch).sort((a, b) => a.epoch - b.epoch);
  }

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "text") node.textContent = v;
      else node.setAttribute(k, v);
    }
    for (const c of children) node.append(c);
    return node;
  }

  function svgEl(tag, attrs, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function fmt(v) {
    if (v === null || v === undefined || !isFinite(v)) return "–";
    const a = Math.abs(v);
    if (a !== 0 && (a < 1e-3 || a >= 1e5)) return v.toExponential(2);
    return String(+v.toPrecision(4));
  }

  const fixed = (v) => (v === null || !isFinite(v) ? "–" : v.toFixed(3));

  // A line chart of [{name, points: [[epoch, value or null], ...]}]; null values are marked as
  // missing (NaN or infinite when logged), never drawn as numbers.
  function chart(title, series, opts) {
    const W = opts.width || 300, H = opts.height || 140;
    const m = { l: 46, r: 10, t: 8, b: 24 };
    const finite = series.flatMap((s) => s.points.filter((p) => p[1] !== null && isFinite(p[1])));
    const main = series.filter((s) => !s.reference);
    const latest = main.length === 1 && finite.length ? fmt(main[0].points.at(-1)[1]) : "";
    const legend = el("span", { class: "legend" });
    const fig = el("figure", { class: "chart", "data-key": title },
      el("figcaption", {}, el("span", { text: title }), legend, el("b", { text: latest })));
    const svg = svgEl("svg", { class: "chart-svg", width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": title });
    fig.append(svg);
    const epochs = series.flatMap((s) => s.points.map((p) => p[0]));
    if (!epochs.length) return fig;
    let [x0, x1] = [Math.min(...epochs), Math.max(...epochs)];
    if (x0 === x1) { x0 -= 0.5; x1 += 0.5; }
    const ys = finite.map((p) => p[1]);
    let [y0, y1] = ys.length ? [Math.min(...ys), Math.max(...ys)] : [0, 1];
    if (opts.range) { y0 = Math.min(y0, opts.range[0]); y1 = Math.max(y1, opts.range[1]); }
    if (y0 === y1) { const d = Math.abs(y0) * 0.05 || 0.5; y0 -= d; y1 += d; }
    const sx = (x) => m.l + ((x - x0) / (x1 - x0)) * (W - m.l - m.r);
    const sy = (y) => H - m.b - ((y - y0) / (y1 - y0)) * (H - m.t - m.b);
    for (const y of [y0, (y0 + y1) / 2, y1]) {
      svg.append(svgEl("line", { class: "grid", x1: m.l, x2: W - m.r, y1: sy(y), y2: sy(y) }));
      svg.append(svgEl("text", { x: m.l - 4, y: sy(y) + 3, "text-anchor": "end" }, fmt(y)));
    }
    svg.append(svgEl("line", { class: "axis", x1: m.l, x2: m.l, y1: m.t, y2: H - m.b }));
    svg.append(svgEl("line", { class: "axis", x1: m.l, x2: W - m.r, y1: H - m.b, y2: H - m.b }));
    const ticks = [...new Set(epochs)].sort((a, b) => a - b);
    const every = Math.ceil(ticks.length / 8);
    ticks.forEach((e, i) => {
      if (i % every === 0 || i === ticks.length - 1)
        svg.append(svgEl("text", { x: sx(e), y: H - m.b + 13, "text-anchor": "middle" }, String(e)));
    });
    svg.append(svgEl("text", { x: W - m.r, y: H - 1, "text-anchor": "end" }, "epoch"));
    series.forEach((s, k) => {
      const colour = s.reference ? REFERENCE[s.reference] || "#888" : COLOURS[k % COLOURS.length];
      if (s.reference) {  // a baseline: a dashed line without dots
        const pts = s.points.filter((p) => p[1] !== null && isFinite(p[1]));
        const d = pts.map((p, i) => `${i ? "L" : "M"}${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join(" ");
        const line = svgEl("path", { class: "reference", d: d, stroke: colour, "stroke-dasharray": "4 3", fill: "none" });
        line.append(svgEl("title", {}, `${s.name} baseline, epoch ${pts.length ? pts.at(-1)[0] : ""}: ${pts.length ? fmt(pts.at(-1)[1]) : "–"}`));
        svg.append(line);
        legend.append(el("span", { style: `color:${colour}`, text: "┄ " + s.name }));
        return;
      }
      let d = "", pen = "M";
      for (const [e, v] of s.points) {
        if (v === null || !isFinite(v)) {
          pen = "M";
          const miss = svgEl("text", { class: "missing", x: sx(e), y: H - m.b - 3, "text-anchor": "middle" }, "×");
          miss.append(svgEl("title", {}, `${s.name}: not a finite number at epoch ${e}`));
          svg.append(miss);
          continue;
        }
        d += `${pen}${sx(e).toFixed(1)},${sy(v).toFixed(1)} `;
        pen = "L";
        const dot = svgEl("circle", { cx: sx(e), cy: sy(v), r: 2.6, fill: colour });
        dot.append(svgEl("title", {}, `${s.name}, epoch ${e}: ${fmt(v)}`));
        svg.append(dot);
      }
      svg.insertBefore(svgEl("path", { class: "series", d: d.trim(), stroke: colour }), svg.querySelector("circle"));
      if (series.length > 1 && !series.some((x) => x.reference)) legend.append(el("span", { style: `color:${colour}`, text: "● " + s.name }));
    });
    return fig;
  }

  function header() {
    const head = document.getElementById("run");
    const rows = DATA.config.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: v })]);
    head.append(el("div", { class: "summary" }, rows.length ? el("dl", {}, ...rows) : el("p", { class: "empty", text: "no config.yaml beside viz/" })));
    const metrics = DATA.metrics;
    const last = metrics.at(-1);
    if (!last || last["val/acc1"] === undefined) {
      head.append(el("p", { class: "empty", text: "no validation metrics recorded yet" }));
      return;
    }
    const acc = el("div", { class: "accuracy", id: "accuracy", text: `top-1 ${fixed(last["val/acc1"])}` });
    const extra = last["val/acc5"] !== undefined ? `, top-5 ${fixed(last["val/acc5"])}` : "";
    acc.append(el("small", { text: `validation, epoch ${last.epoch}${extra}` }));
    head.append(acc);
    const pick = (key, name) => ({ name: name, points: metrics.filter((r) => key in r).map((r) => [r.epoch, r[key]]) });
    const losses = [pick("train/loss", "train"), pick("val/loss", "validation")].filter((s) => s.points.length);
    const accs = [pick("val/acc1", "top-1"), pick("val/acc5", "top-5")].filter((s) => s.points.length);
    if (losses.length) head.append(chart("loss", losses, { width: 340, height: 150 }));
    if (accs.length) head.append(chart("validation accuracy", accs, { width: 340, height: 150, range: [0, 1] }));
  }

  function card(key, frames) {
    const node = el("section", { class: "card", id: "card-" + key, "data-key": key });
    const img = el("img", { loading: "lazy", decoding: "async", alt: key });
    const link = el("a", { class: "frame", title: "open at full size" }, img);
    // the card keeps one size for every epoch: the frame box has the largest picture's shape, and
    // every distinct caption sits, unseen, in the caption's cell so it takes the tallest one's height
    const shown = frames.map((f) => (f[2] < 320 && f[3] < 320 ? 2 : 1));  // small ones at twice their size
    const boxW = Math.max(...frames.map((f, k) => f[2] * shown[k]));
    const boxH = Math.max(...frames.map((f, k) => f[3] * shown[k]));
    link.style.maxWidth = boxW + "px";
    link.style.aspectRatio = `${boxW} / ${boxH}`;
    const caption = el("p", { class: "caption" });
    const sizers = [...new Set(frames.map((f) => f[4] || ""))].map((t) => el("p", { class: "caption sizer", "aria-hidden": "true", text: t }));
    const captions = el("div", { class: "captions" }, caption, ...sizers);
    const prev = el("button", { type: "button", class: "prev", title: "previous epoch (←)", text: "◀" });
    const next = el("button", { type: "button", class: "next", title: "next epoch (→)", text: "▶" });
    const range = el("input", { type: "range", min: 0, max: frames.length - 1, step: 1, "aria-label": key + " epoch" });
    const label = el("span", { class: "epoch" });
    node.append(el("h3", { text: key }), link, captions, el("div", { class: "controls", tabindex: 0 }, prev, range, next, label));
    const widest = Math.max(...frames.map((f) => f[2]));
    if (widest > 700) node.classList.add("wide");  // would be scaled down in a half-width card
    let index = -1;
    function show(i) {
      i = Math.max(0, Math.min(frames.length - 1, i));
      if (i === index) return;
      index = i;
      const [epoch, path, w, h, text] = frames[i];
      const scale = shown[i];
      img.width = w * scale;
      img.height = h * scale;
      img.classList.toggle("small", scale > 1);  // pixels kept sharp
      img.src = path;
      link.href = path;
      range.value = i;
      node.dataset.epoch = epoch;
      label.textContent = `epoch ${epoch} (${i + 1} of ${frames.length})`;
      caption.textContent = text || "";
      prev.disabled = i === 0;
      next.disabled = i === frames.length - 1;
    }
    prev.addEventListener("click", () => show(index - 1));
    next.addEventListener("click", () => show(index + 1));
    range.addEventListener("input", () => show(Number(range.value)));
    node.addEventListener("keydown", (ev) => {
      if (ev.key === "ArrowLeft") show(index - 1);
      else if (ev.key === "ArrowRight") show(index + 1);
    });
    // the latest frame at or before ``epoch`` (the first one when none is)
    node.showEpoch = (epoch) => {
      let i = 0;
      frames.forEach((f, k) => { if (f[0] <= epoch) i = k; });
      show(i);
    };
    show(frames.length - 1);
    cards.push(node);
    return node;
  }

  function sections() {
    const main = document.getElementById("figures");
    const nav = document.getElementById("nav");
    const groups = new Map();
    const titles = new Map(DATA.sections || []);
    for (const [name] of DATA.sections || []) groups.set(name, { figures: [], scalars: [] });
    const group = (key) => key.split("/")[0];
    for (const key of Object.keys(DATA.figures)) {
      if (!groups.has(group(key))) groups.set(group(key), { figures: [], scalars: [] });
      groups.get(group(key)).figures.push(key);
    }
    for (const key of Object.keys(DATA.scalars)) {
      if (!groups.has(group(key))) groups.set(group(key), { figures: [], scalars: [] });
      groups.get(group(key)).scalars.push(key);
    }
    if (!groups.size) main.append(el("p", { class: "empty", text: "no figures or callback scalars yet" }));
    const epochs = new Set();
    for (const [name, g] of groups) {
      nav.append(el("a", { href: "#" + name, text: name }));
      const title = titles.get(name) || name;
      main.append(el("h2", { id: name }, name, ...(title !== name ? [el("small", { text: " · " + title })] : [])));
      if (g.figures.length) {
        main.append(el("div", { class: "cards" }, ...g.figures.map((k) => card(k, DATA.figures[k]))));
        g.figures.forEach((k) => DATA.figures[k].forEach((f) => epochs.add(f[0])));
      }
      if (g.scalars.length) {
        const reference = (k) => { const m = BASELINE.exec(k); return m && DATA.scalars[m[1]] ? m : null; };
        const charts = g.scalars.filter((k) => !reference(k)).map((k) => {
          const refs = g.scalars.map(reference).filter((m) => m && m[1] === k)
            .map((m) => ({ name: m[2], reference: m[2], points: DATA.scalars[m[0]] }));
          return chart(k.slice(name.length + 1), [{ name: k, points: DATA.scalars[k] }, ...refs], {});
        });
        main.append(el("div", { class: "charts" }, ...charts));
      }
    }
    if (epochs.size > 1) {  // one control for every card at once
      const all = [...epochs].sort((a, b) => a - b);
      const range = el("input", { type: "range", id: "all-epochs", min: 0, max: all.length - 1, value: all.length - 1 });
      const shown = el("span", { text: `epoch ${all.at(-1)}` });
      range.addEventListener("input", () => {
        const e = all[Number(range.value)];
        shown.textContent = `epoch ${e}`;
        cards.forEach((c) => c.showEpoch(e));
      });
      nav.append(el("label", {}, "all cards:", range, shown));
    }
  }

  // ``#selftest``: drive the page as a user would and write what happened into the DOM (for tests).
  function selftest(builtMs) {
    const out = { cards: cards.length, keys: cards.map((c) => c.dataset.key), built_ms: builtMs };
    out.captions = cards.map((c) => c.querySelector("p.caption").textContent);
    const multi = cards.find((c) => Number(c.querySelector("input[type=range]").max) > 0);
    if (multi) {
      const img = multi.querySelector("img");
      const steps = [["latest", img.getAttribute("src"), multi.dataset.epoch]];
      multi.querySelector("button.prev").click();
      steps.push(["prev", img.getAttribute("src"), multi.dataset.epoch]);
      const range = multi.querySelector("input[type=range]");
      range.value = 0;
      range.dispatchEvent(new Event("input"));
      steps.push(["slider 0", img.getAttribute("src"), multi.dataset.epoch]);
      multi.querySelector("button.next").click();
      steps.push(["next", img.getAttribute("src"), multi.dataset.epoch]);
      out.stepped = { key: multi.dataset.key, steps: steps, label: multi.querySelector(".epoch").textContent };
    }
    out.charts = [...document.querySelectorAll("figure.chart")].map((f) => ({
      key: f.dataset.key,
      points: f.querySelectorAll("circle").length,
      missing: f.querySelectorAll("text.missing").length,
      references: [...f.querySelectorAll("path.reference")].map((r) => r.getAttribute("d").split("L").length),
      path: (f.querySelector("path.series") || { getAttribute: () => "" }).getAttribute("d"),
    }));
    out.sections = [...document.querySelectorAll("main h2")].map((h) => h.id);
    out.viewport = document.documentElement.clientWidth;
    out.page_width = document.documentElement.scrollWidth;
    out.layout = cards.map((c) => {
      const box = c.getBoundingClientRect();
      const cap = c.querySelector("p.caption").getBoundingClientRect();
      return { key: c.dataset.key, left: box.left, right: box.right, overflow: c.scrollWidth - c.clientWidth, caption_right: cap.right };
    });
    out.sizes = cards.map((c) => {  // the card's size at every epoch
      const seen = [];
      const range = c.querySelector("input[type=range]");
      for (let i = 0; i <= Number(range.max); i++) {
        range.value = i;
        range.dispatchEvent(new Event("input"));
        seen.push([c.offsetWidth, c.offsetHeight]);
      }
      return seen;
    });
    out.images = document.querySelectorAll("img").length;
    out.lazy = document.querySelectorAll("img[loading=lazy]").length;
    out.external = [...document.querySelectorAll("[src],[href]")]
      .map((n) => n.getAttribute("src") || n.getAttribute("href"))
      .filter((u) => /^(https?:)?\/\//.test(u));
    const acc = document.getElementById("accuracy");
    out.accuracy = acc ? acc.firstChild.textContent : null;
    document.body.append(el("pre", { id: "selftest", text: JSON.stringify(out) }));
  }

  header();
  sections();
  const built = performance.now();
  document.body.dataset.builtMs = built.toFixed(1);
  if (location.hash === "#selftest") selftest(built);
  // when the page and its images in view have loaded (milliseconds from navigation start)
  addEventListener("load", () => { document.body.dataset.loadedMs = performance.now().toFixed(1); });
})();
