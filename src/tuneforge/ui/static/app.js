/* tuneforge web UI: plain JavaScript, no build step, no dependencies. Every page talks to the JSON API of the
   server it is served from, with the API key the user signed in with (sessionStorage, or localStorage when
   "remember" is ticked). Pages: #/signin, #/jobs, #/new, #/jobs/<id>, #/playground. */
"use strict";
(() => {
  const KEY = "tuneforge.key";
  // Written on sign-out: other tabs see the change (a "storage" event) and sign out too.
  const SIGNOUT = "tuneforge.signed-out";
  const DRAFT = "tuneforge.new-job-draft";
  const SVG = "http://www.w3.org/2000/svg";

  // ------------------------------------------------------------------------------------------ small helpers
  const $ = (sel, root = document) => root.querySelector(sel);
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

  function build(el, attrs, children) {
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") el.setAttribute("class", v);
      else if (k === "text") el.textContent = v;
      else if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
      else if (k === "value" && "value" in el && el.namespaceURI !== SVG) el.value = v;
      else if (k === "checked" || k === "selected") el[k] = !!v;
      else el.setAttribute(k, v === true ? "" : v);
    }
    for (const c of [children].flat(Infinity)) {
      if (c === null || c === undefined || c === false) continue;
      el.append(c instanceof Node ? c : String(c));
    }
    return el;
  }
  const h = (tag, attrs, ...children) => build(document.createElement(tag), attrs, children);
  const s = (tag, attrs, ...children) => build(document.createElementNS(SVG, tag), attrs, children);
  // replaceChildren that, like h(), skips null/false children and flattens arrays.
  const put = (el, ...children) => { el.replaceChildren(); return build(el, null, children); };

  let uid = 0;
  const newId = (prefix) => `${prefix}-${++uid}`;

  function fmtNum(x, digits = 4) {
    if (x === null || x === undefined || Number.isNaN(x)) return "—";
    if (typeof x !== "number") return String(x);
    if (x !== 0 && (Math.abs(x) < 1e-3 || Math.abs(x) >= 1e6)) return x.toExponential(2);
    return String(+x.toPrecision(digits));
  }
  function fmtBytes(n) {
    if (n === null || n === undefined) return "—";
    if (n >= 0.1 * 2 ** 30) return `${(n / 2 ** 30).toFixed(1)} GiB`;
    if (n >= 2 ** 20) return `${(n / 2 ** 20).toFixed(0)} MiB`;
    return n >= 1024 ? `${(n / 1024).toFixed(1)} KiB` : `${n} bytes`;
  }
  const fmtPct = (x) => (x === null || x === undefined || Number.isNaN(x) ? "—" : `${(100 * x).toFixed(1)}%`);
  function fmtDuration(sec) {
    if (sec === null || sec === undefined) return "—";
    sec = Math.round(sec);
    if (sec < 60) return `${sec} s`;
    if (sec < 3600) return `${Math.floor(sec / 60)} min ${sec % 60} s`;
    return `${Math.floor(sec / 3600)} h ${Math.floor((sec % 3600) / 60)} min`;
  }
  function fmtTime(iso) {
    if (!iso) return "—";
    const d = new Date(iso);
    return d.toLocaleString(undefined, { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit",
      second: "2-digit" });
  }
  function fmtParams(b) {
    if (b === null || b === undefined) return "—";
    if (b < 0.001) return `${+(b * 1e6).toPrecision(3)}K`;
    return b < 1 ? `${Math.round(b * 1000)}M` : `${+b.toFixed(2)}B`;
  }
  const badge = (status) => h("span", { class: `badge ${status}` }, status);
  const ACTIVE = new Set(["queued", "validating", "running"]);

  function debounce(fn, ms) {
    let t = null, pending = null;
    const wrapped = (...args) => {
      clearTimeout(t);
      pending = args;
      t = setTimeout(() => { pending = null; fn(...args); }, ms);
    };
    wrapped.cancel = () => { clearTimeout(t); pending = null; };
    // Run a call still waiting now (a draft saved as the page is left).
    wrapped.flush = () => { if (pending) { const args = pending; wrapped.cancel(); fn(...args); } };
    return wrapped;
  }

  // ------------------------------------------------------------------------------------------ key and API
  const auth = {
    get key() { return sessionStorage.getItem(KEY) || localStorage.getItem(KEY); },
    set(key, remember) {
      sessionStorage.setItem(KEY, key);
      if (remember) localStorage.setItem(KEY, key); else localStorage.removeItem(KEY);
    },
    clear() { sessionStorage.removeItem(KEY); localStorage.removeItem(KEY); me = null; },
    signOut() {
      auth.clear();
      sessionStorage.removeItem(DRAFT);
      localStorage.setItem(SIGNOUT, String(Date.now()));
    },
  };
  let me = null;

  class ApiError extends Error {
    constructor(status, body) {
      const detail = body && (body.detail || (body.error && body.error.message));
      super(typeof detail === "string" ? detail : `HTTP ${status}`);
      this.status = status;
      this.problems = (body && body.problems) || [];
    }
  }

  async function api(path, { method = "GET", json, body, headers = {}, raw = false, signal, key } = {}) {
    const hdrs = { Authorization: `Bearer ${key || auth.key}`, ...headers };
    if (json !== undefined) { hdrs["Content-Type"] = "application/json"; body = JSON.stringify(json); }
    const r = await fetch(path, { method, headers: hdrs, body, signal });
    if (!r.ok) {
      let b = null;
      try { b = await r.json(); } catch (_) { b = { detail: r.statusText }; }
      if (r.status === 401 && !key) { auth.clear(); location.hash = signinHash(); }
      throw new ApiError(r.status, b);
    }
    return raw ? r : r.json();
  }

  function alertBox(err, title) {
    const box = h("div", { class: "alert", role: "alert" }, title ? h("strong", {}, title + " ") : null,
      err instanceof Error ? err.message : String(err));
    if (err && err.problems && err.problems.length > 1) {
      box.append(h("ul", {}, err.problems.map((p) => h("li", {}, p.field ? h("code", {}, p.field) : null,
        p.field ? ": " : "", p.message))));
    }
    return box;
  }

  // ------------------------------------------------------------------------------------------ router
  let cleanups = [];
  const onLeave = (fn) => cleanups.push(fn);

  function every(ms, fn) {
    // Run fn now and then every `ms` (fn may return a different delay) until the page is left.
    let stopped = false, timer = null;
    const tick = async () => {
      if (stopped) return;
      let next = ms;
      try { const r = await fn(); if (typeof r === "number") next = r; } catch (e) { console.error(e); }
      if (!stopped && next > 0) timer = setTimeout(tick, next);
    };
    tick();
    onLeave(() => { stopped = true; clearTimeout(timer); });
  }

  const PAGES = {
    signin: pageSignin,
    jobs: (root, parts) => (parts[1] ? pageJob(root, decodeURIComponent(parts[1])) : pageJobs(root)),
    new: pageNew,
    playground: pagePlayground,
    compare: pageCompare,
    deployments: (root, parts) => pageDeployment(root, decodeURIComponent(parts[1] || "")),
  };

  // The sign-in page remembers where the user was going (a deep link to a job), and goes there after sign-in.
  function signinHash() {
    const here = location.hash;
    return here && here !== "#/" && !here.startsWith("#/signin") ? `#/signin?next=${encodeURIComponent(here)}` : "#/signin";
  }
  function nextHash(params) {
    const next = params.get("next") || "";
    return /^#\/(jobs|new|playground|compare|deployments)\b/.test(next) ? next : "#/jobs";
  }

  async function route() {
    for (const fn of cleanups.splice(0)) { try { fn(); } catch (_) { /* page already gone */ } }
    const [path, query] = location.hash.replace(/^#/, "").split("?");
    const parts = path.split("/").filter(Boolean);
    const params = new URLSearchParams(query || "");
    let name = parts[0] || "jobs";
    if (!auth.key && name !== "signin") { location.replace(signinHash()); return; }
    // Back to the sign-in page while signed in: the key still works, so the page would only look signed out.
    if (auth.key && name === "signin") { location.replace(nextHash(params)); return; }
    if (!PAGES[name]) name = "jobs";
    await chrome(name);
    const main = $("#main");
    const root = h("div", { class: `page page-${name}` });
    put(main, root);
    const done = PAGES[name](root, parts, params);
    const heading = root.querySelector("h1");
    // Move focus to the new page (its heading) unless the page put it somewhere itself (sign-in: the key field).
    if (heading && !root.contains(document.activeElement)) { heading.tabIndex = -1; heading.focus({ preventScroll: true }); }
    try { await done; } catch (e) { root.append(alertBox(e, "This page could not be loaded:")); }
  }

  async function chrome(name) {
    const signedIn = !!auth.key && name !== "signin";
    $("#nav").hidden = !signedIn;
    $("#who").hidden = !signedIn;
    $("#menu").hidden = !signedIn;  // shown on narrow screens only (app.css), where the navigation folds away
    $("#menu").setAttribute("aria-expanded", "false");
    document.body.classList.remove("menu-open");
    for (const a of document.querySelectorAll("#nav a")) {
      if (a.dataset.route === name) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
    }
    if (signedIn && !me) {
      try { me = await api("/v1/me"); } catch (_) { return; }
    }
    if (signedIn && me) $("#who-name").textContent = `Signed in as ${me.owner}${me.is_admin ? " (admin)" : ""}`;
  }

  // ------------------------------------------------------------------------------------------ sign in
  async function pageSignin(root, parts, params) {
    document.title = "Sign in · tuneforge";
    const err = h("div", { "aria-live": "assertive" });
    const input = h("input", { type: "password", id: "api-key", name: "api-key", autocomplete: "off", required: true,
      "aria-describedby": "api-key-help", spellcheck: "false" });
    const remember = h("input", { type: "checkbox", id: "remember" });
    const button = h("button", { type: "submit", class: "primary" }, "Sign in");
    const form = h("form", { class: "panel signin", "aria-labelledby": "signin-title" },
      h("h1", { id: "signin-title" }, "Sign in to tuneforge"),
      h("div", { class: "field" },
        h("label", { for: "api-key" }, "API key"), input,
        h("span", { class: "help", id: "api-key-help" },
          "An administrator creates keys on the server with ", h("code", {}, "tuneforge keys create NAME"), ".")),
      h("div", { class: "field check", style: "margin-top:10px" }, remember,
        h("label", { for: "remember" }, "Remember the key on this computer")),
      h("div", { class: "row", style: "margin-top:14px" }, button), err);
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      put(err);
      const key = input.value.trim();
      if (!key) { err.append(alertBox("Enter an API key.")); input.focus(); return; }
      button.disabled = true;
      try {
        me = await api("/v1/me", { key });
        auth.set(key, remember.checked);
        location.hash = nextHash(params);
      } catch (e2) {
        err.append(alertBox(e2.status === 401 ? "That API key is not valid (or has been revoked)." : e2));
        input.setAttribute("aria-invalid", "true");
        input.focus();
      } finally {
        button.disabled = false;
      }
    });
    root.append(form);
    input.focus();
  }

  // ------------------------------------------------------------------------------------------ jobs list
  async function pageJobs(root) {
    document.title = "Jobs · tuneforge";
    const box = h("div", { class: "panel", "aria-live": "polite" }, h("p", { class: "muted" }, "Loading jobs…"));
    root.append(h("div", { class: "row" }, h("h1", { class: "grow" }, "Fine-tuning jobs"),
      h("a", { class: "button primary", href: "#/new" }, "Create new fine-tuning job")), box);
    // Jobs ticked for comparison; kept across the table's live updates.
    const picked = new Set();
    const compare = h("a", { class: "button", id: "compare-jobs", "aria-disabled": "true", role: "link" }, "Compare selected");
    const pickedNote = h("span", { class: "small muted", id: "compare-note", "aria-live": "polite" });
    const updateCompare = () => {
      const ok = picked.size >= 2;
      compare.textContent = `Compare selected (${picked.size})`;
      if (ok) { compare.href = `#/compare?jobs=${[...picked].map(encodeURIComponent).join(",")}`; compare.removeAttribute("aria-disabled"); }
      else { compare.removeAttribute("href"); compare.setAttribute("aria-disabled", "true"); }
      pickedNote.textContent = ok ? "" : "Tick two or more jobs to compare their curves and results.";
    };
    updateCompare();
    const onPick = (id, on) => { if (on) picked.add(id); else picked.delete(id); updateCompare(); };
    every(2000, async () => {
      const data = await api("/v1/finetune/llm?limit=100");
      await datasetNames(data.jobs.map((j) => j.data_path));
      const focused = document.activeElement && document.activeElement.dataset ? document.activeElement.dataset.pick : null;
      put(box, data.jobs.length ? h("div", { class: "row compare-bar" }, compare, pickedNote) : null, jobsTable(data, picked, onPick));
      if (focused) { const el = box.querySelector(`[data-pick="${CSS.escape(focused)}"]`); if (el) el.focus(); }
      return data.jobs.some((j) => ACTIVE.has(j.status)) ? 2000 : 6000;
    });
  }

  function jobsTable(data, picked, onPick) {
    if (!data.jobs.length) {
      return h("p", {}, "No jobs yet. ", h("a", { href: "#/new" }, "Create your first fine-tuning job"), ".");
    }
    return h("div", { class: "scroll wide" }, h("table", { id: "jobs-table" },
      h("caption", { class: "muted small", style: "text-align:left;caption-side:bottom;padding-top:6px" },
        `${data.total} job${data.total === 1 ? "" : "s"}; updates live.`),
      h("thead", {}, h("tr", {}, h("th", { scope: "col" }, h("span", { class: "sr-only" }, "Compare")), ["Job", "Status", "Base model", "Data", "Progress", "Train loss", "Best val. loss",
        "Created"].map((t) => h("th", { scope: "col", class: /loss/.test(t) ? "num" : null }, t)))),
      h("tbody", {}, data.jobs.map((j) => h("tr", { "data-job": j.job_id },
        h("td", {}, h("input", { type: "checkbox", "data-pick": j.job_id, checked: picked.has(j.job_id),
          "aria-label": `Compare job ${jobName(j)}`, onchange: (e) => onPick(j.job_id, e.target.checked) })),
        h("td", {}, h("a", { href: `#/jobs/${j.job_id}`, class: j.suffix ? "job-name" : "mono" }, jobName(j)),
          j.suffix ? h("div", { class: "mono small muted" }, j.job_id.slice(0, 8)) : null),
        h("td", {}, badge(j.status), j.cancel_requested && j.status !== "cancelled" ? " (cancelling)" : "",
          j.status === "queued" && j.queue_position ? h("span", { class: "muted small" }, ` #${j.queue_position}`) : ""),
        h("td", {}, shortPath(j.model)),
        h("td", {}, dataLabel(j.data_path)),
        h("td", {}, progressCell(j)),
        h("td", { class: "num" }, fmtNum(j.losses.train_loss)),
        h("td", { class: "num" }, fmtNum(j.losses.best_eval_loss)),
        h("td", {}, fmtTime(j.created_at)))))));
  }

  // A job is shown by its name (the spec's `suffix`) when it has one, else by the start of its id.
  const jobName = (j) => j.suffix || j.job_id.slice(0, 8);

  // Uploaded datasets are named by their file names, not their ids; looked up once per id.
  const dsNames = new Map();
  async function datasetNames(paths) {
    if (!paths.some((p) => /^ds_/.test(p || "") && !dsNames.has(p))) return;
    try {
      const page = await api("/v1/datasets?limit=200");
      for (const d of page.datasets) dsNames.set(d.id, d.filename);
    } catch (_) { return; }
    for (const p of paths) if (/^ds_/.test(p || "") && !dsNames.has(p)) dsNames.set(p, null);  // deleted since
  }
  function dataLabel(p) {
    const name = dsNames.get(p);
    return name ? h("span", { title: p }, name, h("span", { class: "muted small" }, ` · ${p}`)) : shortPath(p);
  }

  function shortPath(p) {
    if (!p) return "—";
    const last = p.split("/").filter(Boolean).pop();
    return p.startsWith("/") ? h("span", { title: p }, `…/${last}`) : p;
  }

  function progressBar(percent, label) {
    const pct = Math.max(0, Math.min(100, percent || 0));
    return h("div", { class: "progress", role: "progressbar", "aria-valuemin": "0", "aria-valuemax": "100",
      "aria-valuenow": String(pct), "aria-label": label || "Progress" }, h("span", { style: `width:${pct}%` }));
  }

  // A succeeded job is done whatever step it reached (early stopping ends a run before its planned steps).
  const stoppedEarly = (j) => j.status === "succeeded" && !!j.progress.total_steps && j.progress.step < j.progress.total_steps;
  function progressCell(j) {
    const p = j.progress, done = j.status === "succeeded";
    const text = done ? (stoppedEarly(j) ? `stopped early at ${p.step}/${p.total_steps}` : `done, ${p.step} steps`) :
      p.total_steps ? `${p.step}/${p.total_steps}` : "—";
    return h("div", { class: "row", style: "gap:8px;flex-wrap:nowrap" },
      progressBar(done ? 100 : p.percent, `Progress of job ${jobName(j)}`),
      h("span", { class: "small mono" }, text),
      ACTIVE.has(j.status) && p.eta_seconds !== null ? h("span", { class: "small muted" }, `ETA ${fmtDuration(p.eta_seconds)}`) : "");
  }

  // ------------------------------------------------------------------------------------------ charts (inline SVG)
  function niceTicks(lo, hi, n = 5, integer = false) {
    if (!(hi > lo)) { const pad = Math.abs(lo) * 0.1 || 1; lo -= pad; hi += pad; }
    const raw = (hi - lo) / n;
    const mag = 10 ** Math.floor(Math.log10(raw));
    let step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((st) => st >= raw) || raw;
    if (integer) step = Math.max(1, Math.round(step) === step ? step : Math.ceil(step / 2) * 2);
    const start = Math.floor(lo / step) * step, end = Math.ceil(hi / step) * step;
    const ticks = [];
    for (let v = start; v <= end + step / 2; v += step) ticks.push(+v.toPrecision(10));
    return ticks;
  }

  function tickFormatter(ticks) {
    // As many decimals as the ticks need to differ (0.0028, 0.0030, ...); exponents for tiny steps.
    const step = ticks.length > 1 ? Math.abs(ticks[1] - ticks[0]) : 1;
    if (step && step < 1e-3) return (t) => (t === 0 ? "0" : t.toExponential(Math.max(1, Math.ceil(Math.log10(Math.abs(t) / step)))));
    let d = 0;
    while (d < 8 && ticks.some((t) => Math.abs(t * 10 ** d - Math.round(t * 10 ** d)) > 1e-6)) d++;
    return (t) => t.toFixed(d);
  }

  // A chart's drawing width is its box's width on screen, so that its 11 px labels stay 11 px on a phone.
  const boxWidth = (el, dflt) => Math.round(el.clientWidth) || dflt;

  /* series: [{name, color, points: [[x, y], ...], dots, dash}]; marker: {x, label} draws a dashed vertical line (the kept
     step); returns an <svg> with role=img and a text summary. */
  function lineChart({ series, width = 720, height = 260, xLabel = "step", yLabel = "", id, summary, marker }) {
    const m = { l: 56, r: 14, t: 12, b: 38 };
    const all = series.flatMap((se) => se.points);
    const svg = s("svg", { class: "chart", viewBox: `0 0 ${width} ${height}`, role: "img", id,
      "aria-label": summary || `${yLabel} by ${xLabel}` });
    svg.append(s("title", {}, summary || `${yLabel} by ${xLabel}`));
    if (!all.length) {
      svg.append(s("text", { x: width / 2, y: height / 2, "text-anchor": "middle" }, "No data yet"));
      return svg;
    }
    const xs = all.map((p) => p[0]), ys = all.map((p) => p[1]);
    const xt = niceTicks(Math.min(...xs), Math.max(...xs, Math.min(...xs) + 1), width < 480 ? 4 : 5, xs.every(Number.isInteger));
    const yt = niceTicks(Math.min(...ys), Math.max(...ys));
    const [x0, x1, y0, y1] = [xt[0], xt[xt.length - 1], yt[0], yt[yt.length - 1]];
    const xFmt = tickFormatter(xt), yFmt = tickFormatter(yt);
    const X = (x) => m.l + ((x - x0) / (x1 - x0 || 1)) * (width - m.l - m.r);
    const Y = (y) => height - m.b - ((y - y0) / (y1 - y0 || 1)) * (height - m.t - m.b);
    for (const t of yt) {
      svg.append(s("line", { class: "grid", x1: m.l, x2: width - m.r, y1: Y(t), y2: Y(t) }));
      svg.append(s("text", { x: m.l - 6, y: Y(t) + 4, "text-anchor": "end" }, yFmt(t)));
    }
    for (const t of xt) {
      svg.append(s("text", { x: X(t), y: height - m.b + 16, "text-anchor": "middle" }, xFmt(t)));
    }
    svg.append(s("line", { class: "axis", x1: m.l, x2: m.l, y1: m.t, y2: height - m.b }));
    svg.append(s("line", { class: "axis", x1: m.l, x2: width - m.r, y1: height - m.b, y2: height - m.b }));
    svg.append(s("text", { x: (m.l + width - m.r) / 2, y: height - 4, "text-anchor": "middle" }, xLabel));
    svg.append(s("text", { x: 12, y: (m.t + height - m.b) / 2, "text-anchor": "middle",
      transform: `rotate(-90 12 ${(m.t + height - m.b) / 2})` }, yLabel));
    for (const se of series) {
      if (!se.points.length) continue;
      const pts = se.points.map(([x, y]) => `${X(x).toFixed(1)},${Y(y).toFixed(1)}`).join(" ");
      svg.append(s("polyline", { points: pts, fill: "none", stroke: se.color, "stroke-width": 2,
        "stroke-linejoin": "round", "data-series": se.name, "data-n": se.points.length,
        "stroke-dasharray": se.dash ? "6 4" : null }));
      if (se.dots || se.points.length === 1) {
        for (const [x, y] of se.points) svg.append(s("circle", { cx: X(x), cy: Y(y), r: 3.5, fill: se.color }));
      }
    }
    if (marker && marker.x >= x0 && marker.x <= x1) {
      const mx = X(marker.x);
      svg.setAttribute("data-marker", String(marker.x));
      svg.append(s("line", { class: "marker", x1: mx, x2: mx, y1: m.t, y2: height - m.b, "data-step": marker.x }),
        s("text", { class: "marker-label", x: mx + (mx > width * 0.7 ? -4 : 4), y: m.t + 10,
          "text-anchor": mx > width * 0.7 ? "end" : "start" }, marker.label));
    }
    return svg;
  }

  function legend(items) {
    return h("div", { class: "legend", "aria-hidden": "true" },
      items.map(([name, color]) => h("span", {}, h("i", { style: `background:${color}` }), name)));
  }

  function histogramChart(hist, { width = 560, height = 200 } = {}) {
    const m = { l: 44, r: 12, t: 10, b: 36 };
    const maxC = Math.max(...hist.counts, 1);
    const yt = niceTicks(0, maxC, 4).filter((t) => Number.isInteger(t));
    const yMax = yt[yt.length - 1] || maxC;
    const xMin = hist.edges[0], xMax = hist.edges[hist.edges.length - 1];
    const X = (x) => m.l + ((x - xMin) / (xMax - xMin || 1)) * (width - m.l - m.r);
    const Y = (y) => height - m.b - (y / yMax) * (height - m.t - m.b);
    const label = `Histogram of tokens per example: ${hist.count} examples, ${hist.counts.length} bars of ` +
      `${hist.edges[1] - hist.edges[0]} tokens; cutoff_len ${hist.cutoff_len}, ${hist.truncated} truncated`;
    const svg = s("svg", { class: "chart", id: "token-histogram", viewBox: `0 0 ${width} ${height}`, role: "img",
      "aria-label": label }, s("title", {}, label));
    for (const t of yt) {
      svg.append(s("line", { class: "grid", x1: m.l, x2: width - m.r, y1: Y(t), y2: Y(t) }));
      svg.append(s("text", { x: m.l - 6, y: Y(t) + 4, "text-anchor": "end" }, String(t)));
    }
    hist.counts.forEach((c, i) => {
      const x = X(hist.edges[i]), w = Math.max(1, X(hist.edges[i + 1]) - x - 1);
      svg.append(s("rect", { class: "bar", x, y: Y(c), width: w, height: Y(0) - Y(c), fill: "#2952cc" },
        s("title", {}, `${hist.edges[i]}–${hist.edges[i + 1] - 1} tokens: ${c} examples`)));
    });
    // Label every bar's lower edge (bars of one token: the token count itself), at most ~10 labels.
    const step = hist.edges[1] - hist.edges[0];
    const stride = Math.max(1, Math.ceil(hist.counts.length / 10));
    for (let i = 0; i < hist.counts.length; i += stride) {
      const t = hist.edges[i];
      svg.append(s("text", { x: (X(t) + X(t + step)) / 2, y: height - m.b + 15, "text-anchor": "middle" }, String(t)));
    }
    if (hist.cutoff_len <= xMax && hist.cutoff_len >= xMin) {
      svg.append(s("line", { x1: X(hist.cutoff_len), x2: X(hist.cutoff_len), y1: m.t, y2: height - m.b,
        stroke: "#c62828", "stroke-dasharray": "4 3" }));
    }
    svg.append(s("line", { class: "axis", x1: m.l, x2: width - m.r, y1: Y(0), y2: Y(0) }));
    svg.append(s("text", { x: (m.l + width - m.r) / 2, y: height - 4, "text-anchor": "middle" },
      "tokens per example (after cutoff_len)"));
    return svg;
  }

  // ------------------------------------------------------------------------------------------ dataset report panel
  /* needsTemplate: the rows were read but nothing says how to turn them into text yet (no template written, format
     not recognised): that is the next step to take, not a verdict on the data. */
  function reportPanel(report, hist, tokenNote, needsTemplate) {
    const out = h("div", { class: "report", id: "data-report" });
    const ok = report.ok;
    const cols = Object.keys(report.columns || {});
    out.append(needsTemplate ? h("p", { class: "verdict pending" }, `Next: write a prompt template (section 3) ` +
      `that uses the columns ${cols.join(", ")}, or choose a data format under Advanced settings.`) :
      h("p", { class: `verdict ${ok ? "ok" : "bad"}` },
        ok ? `✓ Trainable: ${report.n_trainable.toLocaleString()} rows` :
          `✗ Not trainable: ${report.n_errors.toLocaleString()} error${report.n_errors === 1 ? "" : "s"}` +
          (report.n_rows ? ` in ${report.n_rows.toLocaleString()} rows` : "")));
    const colTypes = Object.entries(report.columns || {});
    const sp = report.splits;
    out.append(h("dl", { class: "kv small" },
      h("dt", {}, "Source"), h("dd", { class: "mono" }, report.source),
      h("dt", {}, "Read as"), h("dd", {}, (report.source_format || "could not be read") +
        (report.source_detail ? ` (${report.source_detail})` : "")),
      h("dt", {}, "Format"), h("dd", {}, (report.format || "not determined") +
        (report.format_detail ? ` (${report.format_detail})` : "")),
      h("dt", {}, "Rows"), h("dd", {}, `${(report.n_rows || 0).toLocaleString()} (${(report.n_trainable || 0)
        .toLocaleString()} without errors)`),
      colTypes.length ? [h("dt", {}, "Columns"), h("dd", {}, colTypes.map(([n, t]) => `${n}: ${t}`).join(", "))] : null,
      sp ? [h("dt", {}, "Split"), h("dd", { id: "data-split" }, `${sp.train.toLocaleString()} training · ` +
        `${sp.validation.toLocaleString()} validation` + (sp.test ? ` · ${sp.test.toLocaleString()} test` : "") + " rows")] : null,
      report.labels ? [h("dt", {}, "Classes"), h("dd", { id: "class-labels" }, Object.entries(report.labels)
        .map(([name, n]) => `${name} (${n.toLocaleString()} rows)`).join(", "))] : null,
      report.format ? [h("dt", {}, "Used"), h("dd", { id: "columns-used" }, (report.columns_used || []).join(", ") || "none")] : null,
      (report.columns_ignored || []).length ? [h("dt", {}, "Ignored"),
        h("dd", { id: "columns-ignored" }, report.columns_ignored.join(", "))] : null));
    for (const note of report.notes || []) out.append(h("p", { class: "note small" }, note));

    if (report.errors && report.errors.length && !needsTemplate) {
      const shown = report.errors.length;
      out.append(h("h3", {}, `Errors (${report.n_errors.toLocaleString()}` +
        (shown < report.n_errors ? `; the first ${shown} shown` : "") + ")"));
      out.append(h("div", { class: "scroll" }, h("table", { id: "data-errors" },
        h("thead", {}, h("tr", {}, ["Line", "Row", "Field", "Problem"].map((t) => h("th", { scope: "col" }, t)))),
        h("tbody", {}, report.errors.map((e) => h("tr", { class: "data-error" },
          h("td", { class: "num" }, e.line ?? "—"), h("td", { class: "num" }, e.row ?? "—"),
          h("td", { class: "mono" }, e.field || "—"), h("td", {}, e.message)))))));
    }
    if (report.warnings && report.warnings.length) {
      out.append(h("h3", {}, `Warnings (${report.warnings.length})`),
        h("ul", { class: "small", id: "data-warnings" }, report.warnings.map((w) => h("li", { "data-kind": w.kind }, w.message))));
    }

    out.append(h("h3", {}, "Token lengths"));
    if (report.token_stats) {
      const st = report.token_stats;
      out.append(h("p", { class: "small", id: "token-stats" },
        `${st.count.toLocaleString()} examples · min ${st.min} · median ${st.median} · p95 ${st.p95} · max ${st.max}` +
        ` tokens · cutoff_len ${st.cutoff_len} · truncated ${st.truncated} (${(st.truncated_share * 100).toFixed(1)}%)`));
      if (hist) out.append(histogramChart(hist));
    } else {
      out.append(h("p", { class: "small muted" }, tokenNote ||
        "Token counts need a tokenizer: pick a base model the server can load (e.g. a model folder on the server)."));
    }

    const fe = report.first_example;
    if (fe) {
      const where = fe.line ? `line ${fe.line}` : `row ${fe.row}`;
      if (fe.label !== undefined) {  // a classifier's row: the text it reads and the class it learns
        out.append(h("h3", {}, `First example (${where}` + (fe.tokenized ? `, ${fe.n_tokens} tokens` : "") + ")"),
          h("dl", { class: "kv small", id: "first-example" }, h("dt", {}, "Text"),
            h("dd", {}, h("pre", { class: "example" }, fe.rendered)), h("dt", {}, "Label"), h("dd", { class: "mono" }, fe.label)));
        return out;
      }
      out.append(h("h3", {}, `First example (${where}` + (fe.tokenized ? `, ${fe.n_tokens} tokens, ${fe.n_trained} trained` :
        ", as text") + ")"));
      out.append(h("p", { class: "small" }, "Exactly as the model sees it: ",
        h("span", { class: "swatch masked" }, "masked: no loss"), " ",
        h("span", { class: "swatch trained" }, "learned: loss computed")));
      out.append(h("pre", { class: "example", id: "first-example" }, (fe.segments || []).map((seg) =>
        h("span", { class: seg.trained ? "trained" : "masked", title: seg.trained ? "learned" : "masked (no loss)" },
          h("span", { class: "sr-only" }, seg.trained ? "[learned] " : "[masked] "), seg.text))));
    }
    return out;
  }

  // ------------------------------------------------------------------------------------------ new job form
  const LABELS = {
    lora_r: "LoRA rank r", lora_alpha: "LoRA alpha", lora_dropout: "LoRA dropout", lora_bias: "LoRA bias",
    use_gradient_checkpointing: "Gradient checkpointing", use_quantization: "QLoRA: 4-bit base model",
    resume_checkpoint_path: "Resume from checkpoint", target_modules: "Target modules (comma-separated)",
    quantization_type: "QLoRA data type", double_quantization: "QLoRA double quantization",
    cutoff_len: "Cutoff length (tokens)", num_train_epochs: "Epochs", lr_scheduler_type: "Learning-rate schedule",
    gradient_accumulation_steps: "Gradient accumulation steps", eval_steps: "Evaluate every N steps",
    save_steps: "Checkpoint every N steps", max_grad_norm: "Max gradient norm", batch_size: "Batch size",
    hf_token: "Hugging Face token", hf_model_path: "Push adapter to hub repo", use_wandb: "Log to Weights & Biases",
    wandb_login_key: "W&B API key", wandb_username: "W&B entity", wandb_project: "W&B project",
    wandb_run_name: "W&B run name", data_subset: "Dataset subset", data_split: "Dataset split",
    validation_data_path: "Separate validation data",
    test_data_path: "Separate held-out test data", train_on_inputs: "Train on inputs (prompt) too",
  };
  const humanize = (name) => LABELS[name] || (name.charAt(0).toUpperCase() + name.slice(1)).replace(/_/g, " ")
    .replace(/\blr\b/gi, "LR");
  const helpText = (d) => (d || "").replace(/^\(tuneforge\)\s*/, "");
  // A field's help: what it does, in the spec's own words; its name in the job spec (for API users) last.
  const fieldHelp = (id, description, name) => h("span", { class: "help", id }, helpText(description), " ",
    h("code", { class: "spec-name" }, name));

  /* A number against the schema's bounds, checked as it is typed (the server says the same at submission, but
     then only after a round trip): the message names the allowed range. Null when fine. */
  function boundsProblem(v, prop, integer) {
    if (v === null || v === "") return null;
    if (typeof v !== "number" || Number.isNaN(v)) return "Enter a number.";
    if (integer && !Number.isInteger(v)) return "Enter a whole number.";
    const lo = prop.minimum, xlo = prop.exclusiveMinimum, hi = prop.maximum, xhi = prop.exclusiveMaximum;
    const range = [lo !== undefined ? `at least ${lo}` : xlo !== undefined ? `more than ${xlo}` : null,
      hi !== undefined ? `at most ${hi}` : xhi !== undefined ? `less than ${xhi}` : null].filter(Boolean).join(" and ");
    const bad = (lo !== undefined && v < lo) || (xlo !== undefined && v <= xlo) || (hi !== undefined && v > hi) ||
      (xhi !== undefined && v >= xhi);
    return bad ? `${v} is not allowed: must be ${range}.` : null;
  }

  const PRIMARY = {
    pretrainedmodel_config: ["lora_r", "lora_alpha", "lora_dropout", "use_gradient_checkpointing"],
    data_config: ["cutoff_len"],
    training_config: ["num_train_epochs", "max_steps", "batch_size", "learning_rate", "lr_scheduler_type",
      "warmup_steps", "eval_steps", "gradient_accumulation_steps", "early_stopping_patience", "precision"],
  };
  // Fields set elsewhere on the page, or fixed (one allowed value), are not offered as inputs.
  const SKIP = new Set(["pretrainedmodel_config.model_path", "pretrainedmodel_config.use_lora",
    "pretrainedmodel_config.use_quantization", "pretrainedmodel_config.parallelization", "data_config.data_path",
    "data_config.prompt_template", "data_config.data_split_config", "data_config.data_source_type",
    "data_config.prevalidated", "training_config.preference_optimization", "hf_config.hf_model_path",
    "data_config.task", "data_config.text_column", "data_config.label_column", "data_config.image_column",  // section 3
    // A nested section (processes, devices), not a form field: the service decides how a job is placed.
    "training_config.distributed"]);
  const SECTIONS = [["pretrainedmodel_config", "PretrainedModelConfig", "LoRA"], ["data_config", "DataConfig", "Data"],
    ["training_config", "TrainingConfig", "Training"], ["logging_config", "LoggingConfig", "Logging"],
    ["hf_config", "HuggingfaceConfig", "Hugging Face"]];

  /* One input generated from the spec's JSON schema: label, input prefilled with the default, the field's own
     description as one-line help. Returns {el, key, get(), set(v), input}. */
  function schemaField(section, name, prop, dflt) {
    const key = `${section}.${name}`;
    const id = `f-${section}-${name}`;
    const helpId = `${id}-help`;
    let type = prop.type, en = prop.enum, optional = false, inner = prop;
    if (prop.anyOf) {
      const nn = prop.anyOf.filter((x) => x.type !== "null");
      optional = nn.length < prop.anyOf.length;
      inner = nn[0] || {};
      type = inner.type; en = inner.enum;
    }
    const help = fieldHelp(helpId, prop.description, name);
    const problem = h("span", { class: "problem", id: `${id}-problem`, "aria-live": "polite" });
    let input, get, set, check = () => null;
    if (type === "boolean") {
      input = h("input", { type: "checkbox", id, name: key, "aria-describedby": helpId, checked: !!dflt });
      get = () => input.checked; set = (v) => { input.checked = !!v; };
      const el = h("div", { class: "field check" }, input, h("label", { for: id }, humanize(name)), help, problem);
      return { el, key, get, set, input, problem, check, label: humanize(name) };
    }
    if (en) {
      input = h("select", { id, name: key, "aria-describedby": helpId },
        optional ? h("option", { value: "" }, "(default)") : null,
        en.map((v) => h("option", { value: v, selected: v === dflt }, v)));
      get = () => (input.value === "" ? null : input.value); set = (v) => { input.value = v ?? ""; };
    } else if (type === "integer" || type === "number") {
      const min = inner.minimum ?? inner.exclusiveMinimum;
      input = h("input", { type: "number", id, name: key, "aria-describedby": helpId, inputmode: "decimal",
        step: type === "integer" ? "1" : "any", min: min ?? null, value: dflt ?? "",
        placeholder: optional ? "automatic" : null });
      get = () => {
        const v = input.value.trim();
        if (v === "") return optional ? null : dflt;
        const n = Number(v);
        return Number.isNaN(n) ? v : n;
      };
      set = (v) => { input.value = v ?? ""; };
      check = () => boundsProblem(input.value.trim() === "" ? null : Number(input.value.trim()), inner, type === "integer");
    } else if (type === "array") {
      input = h("input", { type: "text", id, name: key, "aria-describedby": helpId, value: (dflt || []).join(", "),
        placeholder: optional ? "automatic" : null });
      get = () => { const v = input.value.split(",").map((x) => x.trim()).filter(Boolean); return v.length ? v : (optional ? null : []); };
      set = (v) => { input.value = (v || []).join(", "); };
    } else {
      const secret = /token|key/.test(name);
      input = h("input", { type: secret ? "password" : "text", id, name: key, "aria-describedby": helpId,
        value: dflt ?? "", autocomplete: "off", placeholder: optional ? "(none)" : null });
      get = () => (input.value === "" && optional ? null : input.value); set = (v) => { input.value = v ?? ""; };
    }
    const el = h("div", { class: "field" }, h("label", { for: id }, humanize(name)), input, help, problem);
    return { el, key, get, set, input, problem, check, label: humanize(name) };
  }

  async function pageNew(root, parts, params) {
    document.title = "New fine-tuning job · tuneforge";
    root.append(h("h1", {}, "Create a fine-tuning job"));
    const loading = h("p", { class: "muted" }, "Loading the job spec…");
    root.append(loading);
    const [{ schema, defaults }, local, uploaded] = await Promise.all([
      api("/v1/spec/schema"), api("/v1/catalog/local"), api("/v1/datasets?limit=200")]);
    loading.remove();
    const defs = schema.$defs;
    const fields = {};
    // modelCheck: the server's answer for st.model (can it be loaded here?); wantedModel: a catalog model to select
    // once the catalog has loaded (a draft or a cloned job).
    const st = { model: null, dataPath: null, report: null, inspectSeq: 0, modelCheck: null, wantedModel: null,
      catalogLoaded: false, discarded: false };

    const problemsBox = h("div", { id: "form-problems", tabindex: "-1" });

    // ---- 1. base model --------------------------------------------------------------------------------------
    const modelFs = h("fieldset", { class: "panel", id: "model-section" }, h("legend", {}, "1. Base model"));
    const filter = h("input", { type: "text", id: "model-filter", placeholder: "e.g. llama, qwen, 7b",
      "aria-controls": "model-table" });
    const tbody = h("tbody", {});
    const table = h("table", { id: "model-table" },
      h("caption", { class: "small muted", style: "text-align:left;caption-side:bottom;padding:6px" },
        "Memory columns: estimated peak for training, batch 1 × 1024 tokens, LoRA r=8, bf16 on a CUDA GPU with " +
        "gradient checkpointing. The estimate for your own settings is shown below the table."),
      h("thead", {}, h("tr", {}, ["Model", "Architecture", "Parameters", "Context", "LoRA", "QLoRA", "Licence"]
        .map((t) => h("th", { scope: "col", class: /Param|Context|LoRA/.test(t) ? "num" : null }, t)))), tbody);
    const otherRadio = h("input", { type: "radio", name: "model", id: "model-other", value: "" });
    const otherInput = h("input", { type: "text", id: "model-other-path", placeholder: "owner/name or /path/on/server",
      "aria-label": "Other model: hub id or model folder on the server" });
    const estimateBox = h("div", { class: "note", id: "memory-estimate", "aria-live": "polite" }, "Pick a model.");
    const modelCheckBox = h("div", { id: "model-check", "aria-live": "polite" });
    modelFs.append(
      h("div", { class: "field", style: "max-width:360px;margin-bottom:8px" },
        h("label", { for: "model-filter" }, "Filter models"), filter),
      h("div", { class: "scroll", style: "max-height:300px" }, table),
      h("div", { class: "row", style: "margin-top:10px" }, otherRadio,
        h("label", { for: "model-other" }, "Another model:"), h("div", { class: "grow" }, otherInput)),
      modelCheckBox, estimateBox);
    root.append(modelFs);

    const modelRows = [];
    function addModelRow(value, cells, group) {
      const rid = newId("model");
      const radio = h("input", { type: "radio", name: "model", id: rid, value });
      const tr = h("tr", { "data-model": value, "data-group": group },
        h("td", {}, h("div", { class: "row", style: "gap:6px;flex-wrap:nowrap" }, radio,
          h("label", { for: rid, style: "font-weight:500" }, cells.name)),
        // Whether a job can start at once or first downloads the weights (the server's hub cache, or bundled).
        h("span", { class: `tag ${cells.onServer ? "on-server" : "download"}` },
          cells.onServer ? "on this server" : "needs download")),
        h("td", {}, cells.arch || "—"), h("td", { class: "num" }, cells.params || "—"),
        h("td", { class: "num" }, cells.context ? cells.context.toLocaleString() : "—"),
        h("td", { class: "num lora" }, cells.lora || "—"), h("td", { class: "num qlora" }, cells.qlora || "—"),
        h("td", { class: "small" }, cells.licence || ""));
      tbody.append(tr);
      modelRows.push({ tr, radio, text: `${value} ${cells.name} ${cells.arch} ${cells.family || ""}`.toLowerCase() });
      return tr;
    }
    if (local.models.length) {
      tbody.append(h("tr", {}, h("th", { colspan: 7, scope: "colgroup" }, "On this server")));
      for (const m of local.models) {
        const tr = addModelRow(m.path, { name: m.name, arch: m.architecture, context: m.context_length,
          onServer: true, licence: h("span", { class: "mono", title: m.path }, m.path) }, "local");
        // Same reference setup as the catalog's columns.
        api(`/v1/catalog/estimate?${new URLSearchParams({ model_path: m.path, batch_size: 1, cutoff_len: 1024,
          lora_r: 8, gradient_checkpointing: true, precision: "bf16", device: "cuda" })}`).then((e) => {
          tr.children[2].textContent = fmtParams(e.params / 1e9);
          tr.querySelector(".lora").textContent = fmtBytes(e.lora.total_bytes);
          tr.querySelector(".qlora").textContent = fmtBytes(e.qlora.total_bytes);
        }).catch(() => {});
      }
    }
    const catalogHead = h("tr", {}, h("th", { colspan: 7, scope: "colgroup" }, "Catalog (loading…)"));
    tbody.append(catalogHead);
    const catalogLoaded = api("/v1/catalog/models").then((cat) => {
      catalogHead.firstChild.textContent = `Catalog (${cat.models.length} models)`;
      for (const m of cat.models) {
        addModelRow(m.id, { name: `${m.alias} · ${m.id}`, arch: m.architecture, family: m.family,
          params: fmtParams(m.params_b) + (m.active_params_b ? ` (${m.active_params_b}B act.)` : ""),
          context: m.context_length, lora: `${m.memory.lora.total_gib.toFixed(1)} GiB`,
          qlora: `${m.memory.qlora.total_gib.toFixed(1)} GiB${m.qlora_4bit ? "" : "*"}`,
          licence: (m.licence.split(" (")[0]) + (m.gated ? " · gated" : ""), onServer: m.on_server }, "catalog");
      }
      st.catalogLoaded = true;
      applyFilter();
      if (st.wantedModel) selectModel(st.wantedModel);
      else if (!st.model) selectModel(defaults.pretrainedmodel_config.model_path);
    }).catch((e) => { catalogHead.firstChild.textContent = `Catalog could not be loaded: ${e.message}`; });
    onLeave(() => catalogLoaded.catch(() => {}));

    function applyFilter() {
      const q = filter.value.trim().toLowerCase();
      for (const r of modelRows) r.tr.classList.toggle("hidden", !!q && !r.text.includes(q) && !r.radio.checked);
    }
    filter.addEventListener("input", applyFilter);

    function selectModel(value) {
      const row = modelRows.find((r) => r.radio.value === value);
      st.wantedModel = !row && !st.catalogLoaded ? value : null;
      if (row) { row.radio.checked = true; otherInput.value = ""; } else { otherRadio.checked = true; otherInput.value = value; }
      onModelChange();
    }
    function currentModel() {
      if (otherRadio.checked) return otherInput.value.trim() || null;
      const r = modelRows.find((x) => x.radio.checked);
      return r ? r.radio.value : null;
    }
    function onModelChange() {
      st.model = currentModel();
      for (const r of modelRows) r.tr.classList.toggle("selected", r.radio.checked);
      checkModel();
      updateEstimate();
      reinspect();
      saveDraft();
    }

    // The model is checked when it is chosen: a misspelt or unloadable one blocks Create here, with the names the
    // server finds close to it, instead of failing in the queue.
    async function checkModel() {
      const model = st.model;
      st.modelCheck = null;
      if (!model) { put(modelCheckBox); return; }
      put(modelCheckBox, h("p", { class: "muted small" }, "Checking the model…"));
      let res;
      try {
        res = await api(`/v1/catalog/check?${new URLSearchParams({ model_path: model })}`);
      } catch (e) {
        res = { ok: false, message: e.message, suggestions: [] };
      }
      if (model !== st.model) return;  // another model was chosen meanwhile
      st.modelCheck = res;
      const WHERE = { local: "a model folder on this server", bundled: "bundled with tuneforge",
        cached: "in this server's model cache", hub: "downloaded from the Hugging Face hub when the job starts" };
      const use = (name) => h("button", { type: "button", class: "link", onclick: () => selectModel(name) }, name);
      if (res.ok) {
        put(modelCheckBox, h("p", { class: "small check-ok" }, "✓ ", h("code", {}, model), ` can be used: ${WHERE[res.source]}.`,
          res.source === "hub" && res.message ? h("span", { class: "muted" }, ` ${res.message.replace(/^model_path: /, "")}`) : null));
      } else {
        put(modelCheckBox, h("div", { class: "alert", role: "alert", id: "model-problem" },
          h("strong", {}, "This model cannot be used: "), res.message.replace(/^model_path: /, ""),
          res.suggestions && res.suggestions.length ? h("p", {}, "Did you mean ",
            res.suggestions.map((n, i) => [i ? " or " : "", use(n)]), "?") : null));
      }
      otherInput.setAttribute("aria-invalid", String(!res.ok && otherRadio.checked));
      refreshProblems();
    }
    modelFs.addEventListener("change", (e) => { if (e.target.name === "model") onModelChange(); });
    otherInput.addEventListener("input", debounce(() => { if (otherInput.value.trim()) { otherRadio.checked = true; onModelChange(); } }, 500));

    // ---- 2. dataset -----------------------------------------------------------------------------------------
    const dataFs = h("fieldset", { class: "panel", id: "data-section" }, h("legend", {}, "2. Dataset"));
    const mode = (v, label, checked) => h("label", {}, h("input", { type: "radio", name: "data-mode", value: v, checked }), label);
    const fileInput = h("input", { type: "file", id: "dataset-file", accept: ".jsonl,.json,.ndjson,.csv,.tsv,.parquet",
      "aria-describedby": "dataset-file-help" });
    const uploadBtn = h("button", { type: "button", id: "upload-btn" }, "Upload and check");
    const serverSelect = h("select", { id: "server-dataset" }, h("option", { value: "" }, "(choose a file)"),
      local.datasets.map((d) => h("option", { value: d.path }, `${d.path} (${fmtBytes(d.size_bytes)})`)));
    const pathInput = h("input", { type: "text", id: "server-dataset-path", placeholder: "/path/inside/an/allowed/folder.jsonl" });
    const uploadedSelect = h("select", { id: "uploaded-dataset" }, h("option", { value: "" }, "(choose a dataset)"),
      uploaded.datasets.map((d) => h("option", { value: d.id }, `${d.filename} · ${d.id} · ${d.n_rows ?? "?"} rows` +
        (d.ok ? "" : " · has errors"))));
    const panes = {
      upload: h("div", { class: "row" }, h("div", { class: "field grow" },
        h("label", { for: "dataset-file" }, "Dataset file"), fileInput,
        h("span", { class: "help", id: "dataset-file-help" },
          "JSON Lines, JSON, CSV/TSV or Parquet. Uploaded once to the server, then checked.")), uploadBtn),
      server: h("div", { class: "grid" },
        h("div", { class: "field" }, h("label", { for: "server-dataset" }, "Data file"), serverSelect,
          h("span", { class: "help" }, `Files in ${local.allowed_folders.join(", ")}`)),
        h("div", { class: "field" }, h("label", { for: "server-dataset-path" }, "…or its path on the server"), pathInput)),
      previous: h("div", { class: "field" }, h("label", { for: "uploaded-dataset" }, "Uploaded dataset"), uploadedSelect),
    };
    const dataStatus = h("div", { id: "data-status", "aria-live": "polite" });
    const reportBox = h("div", { id: "report-box" });
    dataFs.append(h("div", { class: "tabs", role: "radiogroup", "aria-label": "Where the data comes from" },
      mode("upload", "Upload a file", true), mode("server", "File on the server"), mode("previous", "Uploaded before")),
    panes.upload, panes.server, panes.previous, dataStatus, reportBox);
    root.append(dataFs);
    const showPane = () => {
      const v = dataFs.querySelector("input[name=data-mode]:checked").value;
      for (const [k, el] of Object.entries(panes)) el.hidden = k !== v;
    };
    dataFs.addEventListener("change", (e) => { if (e.target.name === "data-mode") showPane(); });
    showPane();

    uploadBtn.addEventListener("click", async () => {
      const f = fileInput.files[0];
      if (!f) { put(dataStatus, alertBox("Choose a file first.")); fileInput.focus(); return; }
      const form = new FormData();
      form.append("file", f, f.name);
      // The upload's own report reads the file as the form says (the task's fields; a template once written).
      for (const [k, v] of Object.entries(dataOptions())) if (v !== null && v !== undefined) form.append(k, String(v));
      uploadBtn.disabled = true;
      put(dataStatus, h("p", { class: "muted" }, `Uploading ${f.name}…`));
      try {
        const ds = await api("/v1/datasets", { method: "POST", body: form });
        uploadedSelect.append(h("option", { value: ds.id }, `${ds.filename} · ${ds.id}`));
        put(dataStatus, h("p", { class: "small" }, "Uploaded as ", h("code", { id: "dataset-id" }, ds.id),
          ` (${fmtBytes(ds.size_bytes)}).`));
        useData(ds.id, ds.report);
      } catch (e) {
        put(dataStatus, alertBox(e, "Upload failed:"));
      } finally {
        uploadBtn.disabled = false;
      }
    });
    serverSelect.addEventListener("change", () => { pathInput.value = serverSelect.value; if (serverSelect.value) useData(serverSelect.value); });
    pathInput.addEventListener("change", () => { if (pathInput.value.trim()) useData(pathInput.value.trim()); });
    uploadedSelect.addEventListener("change", () => { if (uploadedSelect.value) useData(uploadedSelect.value); });

    // A data path from a draft or a cloned job: an upload of the user's under "Uploaded before", else a server file.
    function chooseData(path) {
      const upload = /^ds_/.test(path);
      if (upload && ![...uploadedSelect.options].some((o) => o.value === path)) {
        uploadedSelect.append(h("option", { value: path }, path));
      }
      if (upload) uploadedSelect.value = path; else { pathInput.value = path; serverSelect.value = path; }
      dataFs.querySelector(`input[name=data-mode][value=${upload ? "previous" : "server"}]`).checked = true;
      showPane();
      useData(path);
    }

    function useData(path, firstReport) {
      st.dataPath = path;
      st.inspectSeq++;  // a check of the previous dataset still in flight is not shown
      if (firstReport) showReport(firstReport, null, "Counting tokens…", "uploaded");
      reinspect(true);
      saveDraft();
    }

    const needsTemplate = (report) => !isClassifier() && !report.ok && !report.format && !templateArea.value.trim() &&
      (report.errors || []).length > 0 && report.errors.every((e) => e.kind === "format");
    function showReport(report, hist, note, state) {
      st.report = report;
      reportBox.dataset.state = state;  // "uploaded": the upload's own report; "inspected": with token counts
      put(reportBox, reportPanel(report, hist, note, needsTemplate(report)));
      offerColumns(Object.keys(report.columns || {}));
      refreshProblems();
    }

    const reinspect = debounce(async () => {
      if (!st.dataPath) return;
      const seq = ++st.inspectSeq;
      const body = { data_path: st.dataPath, cutoff_len: fields["data_config.cutoff_len"].get(), ...dataOptions() };
      // The split as the job would use it: the report then gives rows per split and warns of a small validation set.
      if (!splitProblem()) body.data_split_config = splitConfig();
      let note = null;
      if (st.model) body.model_path = st.model;
      dataStatus.setAttribute("aria-busy", "true");
      try {
        let res;
        try {
          res = await api("/v1/data/inspect", { method: "POST", json: body });
        } catch (e) {
          if (!body.model_path || e.status === 404) throw e;
          // The tokenizer could not be loaded (e.g. a hub model on an offline server): report without tokens.
          note = `Token counts skipped: ${e.message}`;
          delete body.model_path;
          res = await api("/v1/data/inspect", { method: "POST", json: body });
        }
        if (seq !== st.inspectSeq) return;
        showReport(res.report, res.token_histogram, note, "inspected");
      } catch (e) {
        if (seq === st.inspectSeq) put(reportBox, alertBox(e, "The dataset could not be checked:"));
      } finally {
        dataStatus.removeAttribute("aria-busy");
      }
    }, 350);
    onLeave(() => reinspect.cancel());

    // ---- 3. prompt template ---------------------------------------------------------------------------------
    const tplProp = defs.DataConfig.properties.prompt_template;
    const templateArea = h("textarea", { id: "prompt-template", name: "data_config.prompt_template", rows: 4,
      "aria-describedby": "prompt-template-help", placeholder: "Question: {question}\nAnswer: {answer}" });
    const chips = h("div", { class: "row", id: "column-chips", style: "gap:6px;margin-top:6px" });
    // The task (data_config.task): text generation from a prompt template, or a task that reads two of the dataset's
    // columns: a classifier (text and label: it learns a classification head) or seq2seq (source and target text for
    // an encoder-decoder such as T5 or BART).
    const dcProps = defs.DataConfig.properties;
    const taskSelect = h("select", { id: "f-task", name: "data_config.task", "aria-describedby": "f-task-help" },
      h("option", { value: "causal_lm" }, "Generate text (causal LM)"),
      h("option", { value: "classification" }, "Classify text (one label per row)"),
      h("option", { value: "image_classification" }, "Classify images (one label per image)"),
      h("option", { value: "seq2seq" }, "Rewrite text (seq2seq: T5, BART)"));
    taskSelect.value = defaults.data_config.task || "causal_lm";
    const columnSelect = (which) => h("select", { id: `f-${which}-column`, name: `data_config.${which}_column`,
      "aria-describedby": `f-${which}-column-help` });
    const textColumn = columnSelect("text"), labelColumn = columnSelect("label"), imageColumn = columnSelect("image");
    const columnsProblem = h("span", { class: "problem", id: "class-columns-problem", "aria-live": "polite" });
    const templateBox = h("div", { id: "template-box" },
      h("div", { class: "field" }, h("label", { for: "prompt-template" }, "Prompt template"), templateArea,
        fieldHelp("prompt-template-help", tplProp.description, "prompt_template")),
      h("div", { class: "small", style: "margin-top:8px" }, h("span", { id: "chips-label" }, "Insert a column of the dataset:"), chips));
    // The column pickers' words per task: the text tasks read text_column and label_column; image classification
    // reads image_column (its own picker, the text one hidden) and label_column, with classification's words.
    const labelWords = "The column holding each row's label (strings or integers); the dataset check lists the " +
      "classes and their rows.";
    const columnWords = {
      classification: ["Text column", "The column holding the text to classify.", "Label column", labelWords],
      seq2seq: ["Source column", "The column holding the source text the encoder reads (with any task prefix, e.g. " +
        "\"translate English to German: \").", "Target column", "The column holding the text the model learns to write."],
    };
    const textLabel = h("label", { for: "f-text-column" }), labelLabel = h("label", { for: "f-label-column" });
    const textHelp = h("span", {}), labelHelp = h("span", {});  // the words before each help's spec name
    const withWords = (help, words) => { help.prepend(words); return help; };
    const textField = h("div", { class: "field", id: "text-column-field" }, textLabel, textColumn,
      withWords(fieldHelp("f-text-column-help", "", "text_column"), textHelp));
    const imageField = h("div", { class: "field", id: "image-column-field" },
      h("label", { for: "f-image-column" }, "Image column"), imageColumn,
      fieldHelp("f-image-column-help", dcProps.image_column.description, "image_column"));
    const classBox = h("div", { id: "class-columns" },
      h("div", { class: "grid" },
        textField, imageField,
        h("div", { class: "field" }, labelLabel, labelColumn,
          withWords(fieldHelp("f-label-column-help", "", "label_column"), labelHelp))),
      columnsProblem);
    const tplFs = h("fieldset", { class: "panel", id: "template-section" }, h("legend", {}, "3. What the model learns"),
      h("div", { class: "field", style: "max-width:420px;margin-bottom:12px" }, h("label", { for: "f-task" }, "Task"),
        taskSelect, fieldHelp("f-task-help", dcProps.task.description, "task")),
      templateBox, classBox);
    root.append(tplFs);
    const isImages = () => taskSelect.value === "image_classification";
    const isClassifier = () => taskSelect.value !== "causal_lm";  // a task that reads two columns (no template)
    const inputColumn = () => (isImages() ? imageColumn : textColumn);  // the column the model reads
    // "text and label", "image and label", "source and target": the two columns the task reads.
    const columnPair = () => {
      const [input, , label] = columnWords[taskSelect.value] || columnWords.classification;
      const name = (words) => words.toLowerCase().replace(" column", "");
      return `${isImages() ? "image" : name(input)} and ${name(label)}`;
    };
    // A column select offers the dataset's columns; before they are known, the wanted name alone (a draft's).
    function fillColumns(sel, cols, wanted) {
      const names = cols.length ? cols : [wanted];
      put(sel, names.map((c) => h("option", { value: c }, c)));
      sel.value = names.includes(wanted) ? wanted : names[0];
    }
    function offerColumns(cols) {
      put(chips, ...(cols.length ? cols.map((c) => h("button", { type: "button", class: "chip",
        "aria-label": `Insert column ${c}`, onclick: () => insertAtCursor(templateArea, `{${c}}`) }, `{${c}}`)) :
        [h("span", { class: "muted" }, "(choose a dataset to see its columns)")]));
      // Keep the user's picks; else the spec's defaults (text, label) where the dataset has them, else two columns.
      const text = textColumn.value || defaults.data_config.text_column || "text";
      const label = labelColumn.value || defaults.data_config.label_column || "label";
      const image = imageColumn.value || defaults.data_config.image_column || "image";
      fillColumns(textColumn, cols, text);
      fillColumns(imageColumn, cols, image);
      fillColumns(labelColumn, cols, cols.includes(label) ? label : cols.find((c) => c !== inputColumn().value) ?? label);
      columnsCheck();
    }
    function columnsCheck() {
      const input = inputColumn();
      const same = isClassifier() && input.value === labelColumn.value;
      columnsProblem.textContent = same ? `The ${columnPair()} columns are both ${input.value}: pick two columns.` : "";
      labelColumn.setAttribute("aria-invalid", String(same));
      return same;
    }
    function showTask() {
      templateBox.hidden = isClassifier();
      classBox.hidden = !isClassifier();
      const [text, textWhat, label, labelWhat] = columnWords[taskSelect.value] || columnWords.classification;
      textLabel.textContent = text;
      labelLabel.textContent = label;
      textHelp.textContent = textWhat;
      labelHelp.textContent = labelWhat;
      textField.hidden = isImages();
      imageField.hidden = !isImages();
      columnsCheck();
    }
    showTask();
    taskSelect.addEventListener("change", () => { showTask(); reinspect(); refreshProblems(); });
    for (const sel of [textColumn, imageColumn, labelColumn]) {
      sel.addEventListener("change", () => { columnsCheck(); reinspect(); refreshProblems(); });
    }
    // How to read the data, as the job's data_config says it: the fields of the chosen task only (the spec refuses
    // template and format settings for a classifier).
    function dataOptions() {
      if (isImages()) {
        return { task: "image_classification", image_column: imageColumn.value, label_column: labelColumn.value };
      }
      if (isClassifier()) {
        return { task: taskSelect.value, text_column: textColumn.value, label_column: labelColumn.value };
      }
      const out = { task: "causal_lm", prompt_template: templateArea.value.trim() || null,
        train_on_inputs: !!(fields["data_config.train_on_inputs"] || { get: () => false }).get() };
      const fmt = fields["data_config.data_format"]; if (fmt) out.data_format = fmt.get() || "auto";
      const cc = fields["data_config.completion_column"]; if (cc && cc.get()) out.completion_column = cc.get();
      return out;
    }
    offerColumns([]);
    function insertAtCursor(area, text) {
      const { selectionStart: a, selectionEnd: b, value } = area;
      area.value = value.slice(0, a) + text + value.slice(b);
      area.focus();
      area.selectionStart = area.selectionEnd = a + text.length;
      area.dispatchEvent(new Event("input"));
    }
    templateArea.addEventListener("input", () => reinspect());

    // ---- 4. training settings -------------------------------------------------------------------------------
    const hpFs = h("fieldset", { class: "panel", id: "settings-section" }, h("legend", {}, "4. Training settings"));
    const qProp = defs.PretrainedModelConfig.properties.use_quantization;
    const qlora = h("input", { type: "checkbox", role: "switch", id: "qlora-switch", name: "pretrainedmodel_config.use_quantization",
      "aria-describedby": "qlora-help", checked: !!defaults.pretrainedmodel_config.use_quantization });
    hpFs.append(h("div", { class: "switch" }, qlora, h("div", {},
      h("label", { for: "qlora-switch" }, "QLoRA: 4-bit base model"),
      h("div", { class: "help small muted", id: "qlora-help" }, helpText(qProp.description), " ",
        h("code", { class: "spec-name" }, "use_quantization")))));
    const primaryGrid = h("div", { class: "grid", style: "margin-top:14px" });
    // The split as two shares of the rows (training gets the rest): validation (the loss curve, early stopping,
    // the kept step) and test (the held-out evaluation after training).
    const splitDefaults = defaults.data_config.data_split_config || {};
    const shareInput = (which, dflt) => h("input", { type: "number", id: `f-${which}-share`, min: "0", max: "0.9",
      step: "0.05", value: dflt ?? 0, inputmode: "decimal", "aria-describedby": `f-${which}-share-help f-${which}-share-problem` });
    const splitInput = shareInput("validation", splitDefaults.validation), testInput = shareInput("test", splitDefaults.test);
    const splitProblemEl = h("span", { class: "problem", id: "f-validation-share-problem" });
    const testProblemEl = h("span", { class: "problem", id: "f-test-share-problem" });
    primaryGrid.append(
      h("div", { class: "field" }, h("label", { for: "f-validation-share" }, "Validation share"), splitInput,
        fieldHelp("f-validation-share-help", "Share of the rows held out to compute the validation loss (0.1 = 10%; " +
          "0 = none). It drives early stopping and which step's adapter is kept.", "data_split_config.validation"),
        splitProblemEl),
      h("div", { class: "field" }, h("label", { for: "f-test-share" }, "Test share"), testInput,
        fieldHelp("f-test-share-help", "Share of the rows never trained on, used after training to compare the base " +
          "and the fine-tuned model's answers (0 = no held-out evaluation).", "data_split_config.test"),
        testProblemEl));
    const shareValue = (el) => (el.value.trim() === "" ? 0 : Number(el.value));
    function splitProblem() {
      const v = shareValue(splitInput), t = shareValue(testInput);
      const bad = (x) => Number.isNaN(x) ? "Enter a number." : x < 0 || x > 0.9 ?
        `${x} is not allowed: a share of the rows between 0 and 0.9 (0.1 = 10%).` : null;
      const pv = bad(v), pt = bad(t);
      const sum = !pv && !pt && v + t > 0.9 ? `Validation and test shares add up to ${+(v + t).toFixed(4)}: ` +
        "keep their sum at 0.9 or less so that training keeps rows." : null;
      splitProblemEl.textContent = pv || sum || "";
      testProblemEl.textContent = pt || "";
      splitInput.setAttribute("aria-invalid", String(!!(pv || sum)));
      testInput.setAttribute("aria-invalid", String(!!pt));
      return pv || pt || sum;
    }
    function splitConfig() {
      const v = shareValue(splitInput), t = shareValue(testInput);
      const out = { train: +(1 - v - t).toFixed(4) };
      if (v > 0) out.validation = v;
      if (t > 0) out.test = t;
      return out;
    }
    for (const el of [splitInput, testInput]) {
      el.addEventListener("input", () => { splitProblem(); reinspect(); refreshProblems(); });
    }
    const advanced = h("details", { id: "advanced" }, h("summary", {}, "Advanced settings"));
    hpFs.append(primaryGrid, advanced);
    for (const [section, def, title] of SECTIONS) {
      const props = defs[def].properties;
      const grid = h("div", { class: "grid" });
      for (const name of Object.keys(props)) {
        const key = `${section}.${name}`;
        if (SKIP.has(key)) continue;
        const f = schemaField(section, name, props[name], (defaults[section] || {})[name]);
        fields[key] = f;
        ((PRIMARY[section] || []).includes(name) ? primaryGrid : grid).append(f.el);
      }
      if (grid.children.length) advanced.append(h("h3", {}, title), grid);
    }
    root.append(hpFs);

    const updateEstimate = debounce(async () => {
      if (!st.model) { estimateBox.textContent = "Pick a model."; return; }
      const q = new URLSearchParams({ model_path: st.model, batch_size: fields["training_config.batch_size"].get(),
        cutoff_len: fields["data_config.cutoff_len"].get(), lora_r: fields["pretrainedmodel_config.lora_r"].get(),
        gradient_checkpointing: fields["pretrainedmodel_config.use_gradient_checkpointing"].get(),
        precision: fields["training_config.precision"].get() });
      try {
        const e = await api(`/v1/catalog/estimate?${q}`);
        const pick = qlora.checked ? "qlora" : "lora";
        const part = (m, label) => h(m === pick ? "strong" : "span", {}, `${label} ${fmtBytes(e[m].total_bytes)}`);
        put(estimateBox, ...[h("span", {}, "Selected ", h("code", {}, st.model), ` (${fmtParams(e.params / 1e9)} parameters). `,
          `Estimated peak memory with the settings below on ${e.device.type} (${e.lora.setup.precision}): `),
        part("lora", "LoRA"), " · ", part("qlora", "QLoRA"),
        h("span", { class: "muted" }, ` — ${e.device.what}` +
          (e.device.available_bytes !== null ? `: ${fmtBytes(e.device.available_bytes)}.` : ".")),
        e.device.available_bytes !== null && e[pick].total_bytes > e.device.available_bytes ?
          h("div", { class: "alert" }, "This would not fit: try QLoRA, a smaller batch or cutoff length, or gradient checkpointing.") : null]
          .filter(Boolean));
      } catch (e) {
        put(estimateBox, `Selected `, h("code", {}, st.model), `. No memory estimate: ${e.message}`);
      }
    }, 300);
    onLeave(() => updateEstimate.cancel());
    for (const k of ["training_config.batch_size", "data_config.cutoff_len", "pretrainedmodel_config.lora_r",
      "pretrainedmodel_config.use_gradient_checkpointing", "training_config.precision"]) {
      fields[k].input.addEventListener("change", updateEstimate);
    }
    qlora.addEventListener("change", updateEstimate);
    fields["data_config.cutoff_len"].input.addEventListener("change", () => reinspect());

    // ---- name and submit ------------------------------------------------------------------------------------
    const suffixProp = schema.properties.suffix;
    const nameInput = h("input", { type: "text", id: "job-suffix", name: "suffix", maxlength: "64", autocomplete: "off",
      placeholder: "e.g. math-answers-v2", "aria-describedby": "job-suffix-help job-suffix-problem", spellcheck: "false" });
    const nameProblem = h("span", { class: "problem", id: "job-suffix-problem" });
    const nameField = { el: h("div", { class: "field", style: "max-width:420px;margin-bottom:12px" },
      h("label", { for: "job-suffix" }, "Job name (optional)"), nameInput,
      fieldHelp("job-suffix-help", suffixProp.description, "suffix"), nameProblem),
    input: nameInput, problem: nameProblem, label: "Job name",
    check: () => (nameInput.value.trim() && !/^[A-Za-z0-9][A-Za-z0-9._-]*$/.test(nameInput.value.trim()) ?
      "Use letters, digits, '.', '_' and '-' only, starting with a letter or digit." : null) };
    const submit = h("button", { type: "submit", class: "primary", id: "create-job" }, "Create fine-tuning job");
    const form = h("form", { id: "new-job", novalidate: true, "aria-labelledby": "new-job-title" });
    // The fieldsets were appended to root for progressive rendering; move them into the form.
    form.append(modelFs, dataFs, tplFs, hpFs, h("div", { class: "panel" }, nameField.el, problemsBox,
      h("div", { class: "row" }, submit, h("span", { class: "muted small" },
        "The job is queued at once; its page shows the loss curves as it trains."))));
    root.querySelector("h1").id = "new-job-title";
    root.append(form);

    // ---- problems: checked as the user types; the summary above Create appears once Create was pressed ----------
    // Each problem is said once: a setting's own problem next to it (the summary links to it), the others in the
    // summary. Fixing one removes it at once; the server's answers for a field go away when that field is edited.
    const checked = [...Object.values(fields), nameField];
    const serverProblems = new Map();  // field key ("" for none) -> message, from the last submission
    function fieldProblem(f) {
      const msg = f.check() || serverProblems.get(f.key ?? "suffix") || null;
      f.problem.textContent = msg || "";
      if (msg) f.input.setAttribute("aria-invalid", "true"); else f.input.removeAttribute("aria-invalid");
      return msg;
    }
    function clientProblems() {
      const out = [];
      if (!st.model) out.push({ text: "Pick a base model (section 1).", el: modelFs });
      else if (st.modelCheck && !st.modelCheck.ok) out.push({ text: "The base model cannot be used (section 1).", el: modelCheckBox });
      if (!st.dataPath) out.push({ text: "Choose a dataset (section 2).", el: dataFs });
      else if (st.report && needsTemplate(st.report)) out.push({ text: "Write a prompt template (section 3).", el: templateArea });
      else if (columnsCheck()) out.push({ text: `Pick two different columns for the ${columnPair()} (section 3).`, el: labelColumn });
      else if (st.report && !st.report.ok) out.push({ text: "The dataset check found errors: fix the data or the template first.", el: reportBox });
      if (isClassifier() && qlora.checked) {
        const who = taskSelect.value === "seq2seq" ? "A seq2seq model" : "A classifier";
        out.push({ text: `${who} trains without QLoRA: turn off the 4-bit base model (section 4).`, el: qlora });
      }
      const sp = splitProblem();
      if (sp) out.push({ text: "Validation or test share", el: splitInput, link: true });
      for (const f of checked) if (fieldProblem(f)) out.push({ text: f.label, el: f.input, link: true });
      for (const [key, msg] of serverProblems) if (key === "" ) out.push({ text: msg });
      return out;
    }
    function refreshProblems() {
      const all = clientProblems();
      if (!st.submitted) return all;
      put(problemsBox);
      if (!all.length) return all;
      const jump = (el) => (e) => { e.preventDefault(); el.scrollIntoView({ block: "center" }); if (el.focus) el.focus(); };
      const settings = all.filter((p) => p.link), other = all.filter((p) => !p.link);
      problemsBox.append(h("div", { class: "alert", role: "alert" },
        h("strong", {}, "The job was not created yet:"),
        h("ul", {}, other.map((p) => h("li", {}, p.el ? h("a", { href: "#", onclick: jump(p.el) }, p.text) : p.text)),
          settings.length ? h("li", {}, "Fix the settings marked below: ", settings.map((p, i) =>
            [i ? ", " : "", h("a", { href: "#", onclick: jump(p.el) }, p.text)])) : null)));
      return all;
    }
    for (const f of checked) {
      f.input.addEventListener("input", () => { serverProblems.delete(f.key ?? "suffix"); fieldProblem(f); refreshProblems(); });
    }

    // ---- the spec the form describes; drafts survive Back and reloads (this tab only) -----------------------
    function collectSpec() {
      const spec = { pretrainedmodel_config: { model_path: st.model, use_quantization: qlora.checked },
        data_config: { data_path: st.dataPath, data_split_config: splitConfig() },
        training_config: {}, logging_config: {}, hf_config: {} };
      for (const [key, f] of Object.entries(fields)) {
        const [section, name] = key.split(".");
        spec[section][name] = f.get();
      }
      Object.assign(spec.data_config, dataOptions());  // after the fields: a classifier's spec has no causal-only ones
      if (isClassifier()) for (const k of ["data_format", "completion_column", "train_on_inputs"]) delete spec.data_config[k];
      const suffix = nameInput.value.trim();
      if (suffix) spec.suffix = suffix;
      return spec;
    }
    function fillFromSpec(spec) {
      const p = spec.pretrainedmodel_config || {}, d = spec.data_config || {};
      for (const [key, f] of Object.entries(fields)) {
        const [section, name] = key.split(".");
        const v = (spec[section] || {})[name];
        if (v !== undefined && v !== "***") f.set(v);  // redacted secrets are typed again
      }
      qlora.checked = !!p.use_quantization;
      templateArea.value = d.prompt_template || "";
      taskSelect.value = d.task || "causal_lm";
      if (d.text_column) fillColumns(textColumn, [], d.text_column);
      if (d.label_column) fillColumns(labelColumn, [], d.label_column);
      if (d.image_column) fillColumns(imageColumn, [], d.image_column);
      showTask();
      const split = d.data_split_config || {};
      splitInput.value = split.validation ?? 0;
      testInput.value = split.test ?? 0;
      nameInput.value = spec.suffix || "";
      if (p.model_path) selectModel(p.model_path);
      if (d.data_path) chooseData(d.data_path);
    }
    const saveDraft = debounce(() => {
      if (st.restoring || st.discarded) return;
      try { sessionStorage.setItem(DRAFT, JSON.stringify(collectSpec())); } catch (_) { /* storage full or off */ }
    }, 300);
    onLeave(() => saveDraft.flush());
    form.addEventListener("input", saveDraft);
    form.addEventListener("change", saveDraft);

    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      st.submitted = true;
      serverProblems.clear();
      if (refreshProblems().length) { problemsBox.focus(); return; }
      submit.disabled = true;
      try {
        const spec = collectSpec();
        if (/^ds_/.test(st.dataPath)) {
          // An upload's stored report is the one the server checks at submission; it was made with the options of
          // the moment of upload (often before a template was written): store the report of the form's options.
          const d = spec.data_config;
          await api(`/v1/datasets/${encodeURIComponent(st.dataPath)}/validate`, { method: "POST", json: {
            cutoff_len: d.cutoff_len, ...dataOptions() } });
        }
        const job = await api("/v1/finetune/llm", { method: "POST", json: spec });
        saveDraft.cancel();
        sessionStorage.removeItem(DRAFT);
        location.hash = `#/jobs/${job.job_id}`;
      } catch (err) {
        const listed = err.problems && err.problems.length ? err.problems : [{ field: null, message: err.message }];
        for (const p of listed) {
          const key = p.field === "data_config.data_split_config" ? "" : p.field;
          const known = key && (fields[key] || key === "suffix");
          serverProblems.set(known ? key : "", known ? p.message : (p.field ? `${p.field}: ${p.message}` : p.message));
        }
        refreshProblems();
        problemsBox.focus();
      } finally {
        submit.disabled = false;
      }
    });

    // ---- start: a cloned job's settings, else the draft of this tab, else the defaults -----------------------
    const from = params.get("from");
    let startNote = null;
    let start = null;
    if (from) {
      try {
        const src = await api(`/v1/finetune/llm/${encodeURIComponent(from)}`);
        start = src.spec;
        startNote = h("p", { class: "note", id: "form-origin" }, "Settings copied from job ",
          h("a", { href: `#/jobs/${src.job_id}` }, jobName(src)), ". Change what you need, then create the new job.");
      } catch (e) {
        startNote = alertBox(e, `The settings of job ${from} could not be loaded:`);
      }
    } else {
      try { start = JSON.parse(sessionStorage.getItem(DRAFT) || "null"); } catch (_) { start = null; }
      if (start) {
        startNote = h("p", { class: "note", id: "form-origin" }, "Your unsent settings are back. ",
          h("button", { type: "button", class: "link", onclick: () => {
            // A save still pending (or one that a late change event queues) must not write the draft back as
            // the page is left.
            st.discarded = true;
            saveDraft.cancel();
            sessionStorage.removeItem(DRAFT); location.replace("#/new?fresh=" + Date.now());
          } }, "Start over"));
      }
    }
    if (startNote) root.querySelector("h1").after(startNote);
    if (start) {
      st.restoring = true;
      try { fillFromSpec(start); } finally { st.restoring = false; }
      if (from) saveDraft();
    } else if (local.models.length) selectModel(local.models[0].path);
  }

  // ------------------------------------------------------------------------------------------ job page
  function streamEvents(jobId, onEvent, onEnd) {
    // The events endpoint's server-sent event stream, read with fetch so that the key travels in a header
    // (EventSource cannot send one). Reconnects from the last seq seen until the stream says the job ended.
    const ctrl = new AbortController();
    let stopped = false, last = 0;
    (async () => {
      while (!stopped) {
        try {
          const r = await api(`/v1/finetune/llm/${jobId}/events?stream=true&after=${last}`,
            { raw: true, signal: ctrl.signal, headers: { Accept: "text/event-stream" } });
          const reader = r.body.getReader();
          const dec = new TextDecoder();
          let buf = "";
          for (;;) {
            const { value, done } = await reader.read();
            if (done) break;
            buf += dec.decode(value, { stream: true });
            let i;
            while ((i = buf.indexOf("\n\n")) >= 0) {
              const block = buf.slice(0, i); buf = buf.slice(i + 2);
              let type = "message", data = "";
              for (const line of block.split("\n")) {
                if (line.startsWith("event: ")) type = line.slice(7);
                else if (line.startsWith("data: ")) data += line.slice(6);
              }
              if (!data) continue;
              const obj = JSON.parse(data);
              if (type === "end") { stopped = true; onEnd(obj); return; }
              last = obj.seq;
              onEvent(obj);
            }
          }
        } catch (e) {
          if (stopped || e.name === "AbortError") return;
          if (e.status === 404 || e.status === 401) return;
        }
        await sleep(2000);
      }
    })();
    return () => { stopped = true; ctrl.abort(); };
  }

  async function pageJob(root, jobId) {
    document.title = `Job ${jobId.slice(0, 8)} · tuneforge`;
    const nameSlot = h("span", { class: "mono", id: "job-name" }, jobId.slice(0, 8));
    const title = h("h1", {}, "Job ", nameSlot, " ");
    const statusSlot = h("span", { id: "job-status", "aria-live": "polite" });
    title.append(statusSlot);
    root.append(h("p", { class: "small" }, h("a", { href: "#/jobs" }, "← All jobs")), title);

    const progressBox = h("div", { class: "panel", id: "job-progress" });
    const actions = h("div", { class: "row", id: "job-actions" });
    const actionStatus = h("div", { "aria-live": "polite" });
    const deployBox = h("div", { id: "deploy-box" });
    const lossFig = h("figure", { class: "chart", id: "loss-figure" }, h("figcaption", {}, "Loss"));
    const lrFig = h("figure", { class: "chart", id: "lr-figure" }, h("figcaption", {}, "Learning rate"));
    // Preference jobs (ORPO/DPO/SimPO): validation reward accuracy and margin, shown once the first one arrives.
    const rewardFig = h("figure", { class: "chart", id: "reward-figure", hidden: true },
      h("figcaption", {}, "Reward accuracy and margin"));
    const logPre = h("pre", { class: "log", id: "job-log", role: "log", "aria-live": "polite", "aria-label": "Job log",
      tabindex: "0" });
    const details = h("details", {}, h("summary", {}, "Job spec and result"));
    const evalBox = h("div", { class: "panel", id: "job-evaluation", hidden: true });
    // Classification jobs: validation accuracy and macro-F1 by step, and the kept classifier on the held-out rows.
    const classFig = h("figure", { class: "chart", id: "class-figure", hidden: true },
      h("figcaption", {}, "Validation accuracy and macro-F1"));
    const classBox = h("div", { class: "panel", id: "job-classification", hidden: true });
    const seq2seqBox = h("div", { class: "panel", id: "job-seq2seq", hidden: true });
    // A succeeded job's adapter merged into its base: a Hugging Face folder (zip) or one GGUF file.
    const exportBox = h("section", { class: "panel", id: "job-export", hidden: true, "aria-labelledby": "export-title" });
    root.append(progressBox, h("div", { class: "panel" }, actions, actionStatus, deployBox), exportBox, classBox, seq2seqBox, evalBox,
      h("div", { class: "panel" }, h("h2", {}, "Training curves"),
        h("div", { class: "charts" }, lossFig, lrFig, rewardFig, classFig)),
      h("div", { class: "panel" }, h("h2", {}, "Log"), logPre), h("div", { class: "panel" }, details));

    const train = [], evals = [], lrs = [], rewardAcc = [], rewardMargin = [], classAcc = [], classF1 = [];
    let job = null, drawPending = false, lastLr = null;
    const drawCharts = () => {
      if (drawPending) return;
      drawPending = true;
      requestAnimationFrame(() => {
        drawPending = false;
        const last = (a) => (a.length ? a[a.length - 1][1] : null);
        // Once the run is over, the step whose adapter was kept (the lowest validation loss) is marked.
        const kept = job && !ACTIVE.has(job.status) && job.losses.best_step !== null ? job.losses.best_step : null;
        const summary = `Loss by step: training loss ${train.length ? `from ${fmtNum(train[0][1])} to ${fmtNum(last(train))}` +
          ` over ${train.length} steps` : "not recorded yet"}; validation loss ${evals.length ? `from ${fmtNum(evals[0][1])} ` +
          `to ${fmtNum(last(evals))} at ${evals.length} evaluations` : "not recorded yet"}.`;
        put(lossFig, h("figcaption", {}, "Loss"), lineChart({ id: "loss-chart", yLabel: "loss",
          summary: summary + (kept !== null ? ` The adapter of step ${kept} was kept.` : ""),
          width: boxWidth(lossFig, 720), marker: kept !== null ? { x: kept, label: `kept step ${kept}` } : null,
          series: [{ name: "train", color: "var(--train)", points: train },
            { name: "validation", color: "var(--eval)", points: evals, dots: true }] }),
        legend([["training loss", "var(--train)"], ["validation loss", "var(--eval)"]]));
        put(lrFig, h("figcaption", {}, "Learning rate"), lineChart({ id: "lr-chart", yLabel: "learning rate",
          width: boxWidth(lrFig, 420), summary: lrs.length ? `Learning rate by step, last ${fmtNum(last(lrs))}` : "No learning rate yet",
          series: [{ name: "lr", color: "var(--lr)", points: lrs }] }), legend([["learning rate", "var(--lr)"]]));
        if (rewardAcc.length) {
          rewardFig.hidden = false;
          const rsum = `Validation reward accuracy from ${fmtNum(rewardAcc[0][1])} to ${fmtNum(last(rewardAcc))}, ` +
            `reward margin from ${fmtNum(rewardMargin[0][1])} to ${fmtNum(last(rewardMargin))}, at ${rewardAcc.length} evaluations.`;
          put(rewardFig, h("figcaption", {}, "Reward accuracy and margin (validation pairs)"),
            lineChart({ id: "reward-accuracy-chart", yLabel: "reward accuracy", width: boxWidth(rewardFig, 420), summary: rsum,
              series: [{ name: "accuracy", color: "#2ca02c", points: rewardAcc, dots: true }] }),
            lineChart({ id: "reward-margin-chart", yLabel: "reward margin", width: boxWidth(rewardFig, 420), summary: rsum,
              series: [{ name: "margin", color: "#9467bd", points: rewardMargin, dots: true }] }),
            legend([["chosen beats rejected (share)", "#2ca02c"], ["chosen minus rejected reward", "#9467bd"]]));
        }
        if (classAcc.length) {
          classFig.hidden = false;
          const csum = `Validation accuracy from ${fmtPct(classAcc[0][1])} to ${fmtPct(last(classAcc))}, macro-F1 from ` +
            `${fmtNum(classF1[0][1])} to ${fmtNum(last(classF1))}, at ${classAcc.length} evaluations.`;
          put(classFig, h("figcaption", {}, "Validation accuracy and macro-F1"),
            lineChart({ id: "class-chart", yLabel: "score (0-1)", width: boxWidth(classFig, 420), summary: csum,
              series: [{ name: "accuracy", color: "#2ca02c", points: classAcc, dots: true },
                { name: "macro-F1", color: "#9467bd", points: classF1, dots: true }] }),
            legend([["accuracy", "#2ca02c"], ["macro-F1", "#9467bd"]]));
        }
      });
    };
    drawCharts();
    const onResize = debounce(drawCharts, 150);
    window.addEventListener("resize", onResize);
    onLeave(() => { onResize.cancel(); window.removeEventListener("resize", onResize); });
    const logLine = (text) => {
      const atEnd = logPre.scrollTop + logPre.clientHeight >= logPre.scrollHeight - 4;
      logPre.append(text + "\n");
      if (atEnd) logPre.scrollTop = logPre.scrollHeight;
    };
    const upsert = (arr, x, y) => {
      // A resumed job reports the steps after its last checkpoint again: the later value counts.
      while (arr.length && arr[arr.length - 1][0] >= x) arr.pop();
      arr.push([x, y]);
    };
    const onEvent = (ev) => {
      const at = ev.time ? new Date(ev.time * 1000).toLocaleTimeString() : "";
      if (ev.type === "train") {
        if (ev.loss !== undefined && ev.loss !== null) upsert(train, ev.step, ev.loss);
        if (ev.lr !== undefined && ev.lr !== null) { upsert(lrs, ev.step, ev.lr); lastLr = ev.lr; }
        drawCharts();
        // Every training line the run recorded (logging_steps), as the CLI prints them.
        logLine(`${at} step ${ev.step}/${ev.total_steps} loss ${fmtNum(ev.loss)} lr ${fmtNum(ev.lr)}`);
        renderProgress();
      } else if (ev.type === "eval") {
        upsert(evals, ev.step, ev.eval_loss);
        const pref = ev.eval_reward_accuracy !== undefined && ev.eval_reward_accuracy !== null;
        if (pref) { upsert(rewardAcc, ev.step, ev.eval_reward_accuracy); upsert(rewardMargin, ev.step, ev.eval_reward_margin); }
        const cls = ev.eval_accuracy !== undefined && ev.eval_accuracy !== null;
        if (cls) { upsert(classAcc, ev.step, ev.eval_accuracy); upsert(classF1, ev.step, ev.eval_macro_f1); }
        drawCharts();
        logLine(`${at} eval at step ${ev.step}: validation loss ${fmtNum(ev.eval_loss)}` +
          (pref ? `, reward accuracy ${fmtNum(ev.eval_reward_accuracy)}, margin ${fmtNum(ev.eval_reward_margin)}` : "") +
          (cls ? `, accuracy ${fmtPct(ev.eval_accuracy)}, macro-F1 ${fmtNum(ev.eval_macro_f1)}` : ""));
      } else if (ev.type === "log") {
        logLine(`${at} ${ev.message}`);
      } else if (ev.type === "status") {
        logLine(`${at} status: ${ev.status}${ev.message && ev.message !== ev.status ? ` — ${ev.message}` : ""}`);
        refresh();
      } else if (ev.type === "evaluation") {
        const r = ev.results || {};
        logLine(`${at} held-out evaluation on ${ev.rows} rows: exact match ${fmtPct(r.base?.exact_match)} (base) → ` +
          `${fmtPct(r.adapter?.exact_match)} (fine-tuned)`);
      } else if (ev.type === "classification") {
        logLine(`${at} classifier on ${ev.examples} ${ev.split} rows: accuracy ${fmtPct(ev.accuracy)}, ` +
          `macro-F1 ${fmtNum(ev.macro_f1)}`);
      } else if (ev.type === "validation") {
        const r = ev.report || {};
        logLine(`${at} data check: ${r.ok ? "trainable" : "NOT trainable"}, ${r.n_rows ?? "?"} rows` +
          (r.splits ? ` (${Object.entries(r.splits).map(([k, v]) => `${k} ${v}`).join(", ")})` : ""));
      }
    };

    function stat(k, v, id) { return h("div", { class: "stat", id }, h("div", { class: "k" }, k), h("div", { class: "v" }, v)); }
    // What a finished run came to, in one sentence: its steps, the step whose adapter was kept, that step's loss.
    function resultSummary() {
      const p = job.progress, l = job.losses, r = job.result || {};
      const of = p.total_steps ? ` of ${p.total_steps}` : "";
      if (job.status === "succeeded") {
        const early = r.stopped_early ?? stoppedEarly(job);
        const patience = ((job.spec || {}).training_config || {}).early_stopping_patience;
        const head = early ? `Stopped early at step ${p.step}${of}` +
          (patience ? ` (validation loss did not improve for ${patience} evaluations)` : "") :
          `Finished all ${p.step} steps`;
        const kept = l.best_step === null ? "kept the last step (no validation rows)" :
          `kept step ${l.best_step}` + (l.best_step === 0 ? " (no evaluation improved on the starting point)" : "") +
          `, validation loss ${fmtNum(l.best_eval_loss)}`;
        const took = r.wall_time_seconds ? ` Took ${fmtDuration(r.wall_time_seconds)}.` : "";
        return `${head}; ${kept}.${took}`;
      }
      return `${job.status === "failed" ? "Failed" : "Cancelled"} at step ${p.step}${of}.`;
    }

    // A multi-process job (training_config.distributed): its strategy and how many processes, on how many machines.
    function processesText() {
      const d = ((job.spec || {}).training_config || {}).distributed;
      if (!d || !d.strategy || d.strategy === "none") return null;
      const nodes = d.nnodes || 1;
      const machines = nodes === 1 ? "1 machine" : `${nodes} machines`;
      const count = d.nproc_per_node ? `${d.nproc_per_node * nodes} processes` +
        (nodes > 1 ? ` (${d.nproc_per_node} on each of ${machines})` : "") :
        `one process per GPU on ${machines}`;  // the default: as many as the machine has visible GPUs
      return `${d.strategy.toUpperCase()} · ${count}`;
    }

    function renderProgress() {
      if (!job) return;
      const p = job.progress, l = job.losses, done = !ACTIVE.has(job.status);
      put(statusSlot, badge(job.status));
      if (job.suffix) { nameSlot.textContent = job.suffix; nameSlot.className = ""; document.title = `Job ${job.suffix} · tuneforge`; }
      put(progressBox,
        done ? h("p", { id: "job-summary", class: `summary ${job.status}` }, resultSummary()) :
          h("div", { class: "row" }, h("div", { class: "grow" }, progressBar(p.percent, "Training progress")),
            h("span", { class: "mono", id: "job-percent" }, `${p.percent}%`)),
        h("div", { class: "stats" },
          stat("Step", p.total_steps ? `${p.step} / ${p.total_steps}` : `${p.step}`, "stat-step"),
          stat("Epoch", p.epoch !== null && p.epoch !== undefined ? fmtNum(p.epoch, 3) : "—"),
          // Time left and speed mean nothing once the run is over.
          done ? null : stat("ETA", job.status === "queued" ? (job.queue_position ? `queued (#${job.queue_position})` : "queued") :
            fmtDuration(p.eta_seconds), "stat-eta"),
          done ? null : stat("Speed", p.steps_per_second ? `${fmtNum(p.steps_per_second, 3)} steps/s` : "—"),
          stat("Training loss", fmtNum(train.length ? train[train.length - 1][1] : l.train_loss), "stat-train-loss"),
          done ? stat("Kept step", l.best_step ?? p.step, "stat-kept-step") :
            stat("Validation loss", fmtNum(l.eval_loss ?? (evals.length ? evals[evals.length - 1][1] : null)), "stat-eval-loss"),
          stat(done ? "Validation loss (kept step)" : "Best validation loss", l.best_eval_loss !== null ?
            `${fmtNum(l.best_eval_loss)}${done ? "" : ` (step ${l.best_step})`}` : "—", "stat-best-loss"),
          done ? null : stat("Learning rate", fmtNum(lastLr), "stat-lr")),
        h("dl", { class: "kv small", style: "margin-top:10px" },
          h("dt", {}, "Job id"), h("dd", { class: "mono" }, job.job_id),
          h("dt", {}, "Base model"), h("dd", { class: "mono" }, job.model),
          h("dt", {}, "Data"), h("dd", { class: "mono" }, dataLabel(job.data_path)),
          job.node || job.devices ? [h("dt", {}, done ? "Ran on" : "Runs on"),
            h("dd", { class: "mono", id: "job-placement" }, [job.node, job.devices].filter(Boolean).join(" · "))] : null,
          processesText() ? [h("dt", {}, "Processes"), h("dd", { id: "job-processes" }, processesText())] : null,
          h("dt", {}, "Created"), h("dd", {}, fmtTime(job.created_at)),
          h("dt", {}, "Finished"), h("dd", {}, fmtTime(job.finished_at))),
        job.error ? h("div", { class: "alert", role: "alert", id: "job-error" }, h("strong", {}, "Failed: "), job.error) : null);
    }

    // Held-out evaluation (test rows): base vs fine-tuned per metric, and rows where their answers differ.
    let shownEval = false;
    function renderEvaluation() {
      const ev = job.evaluation;
      if (!ev || shownEval) return;
      shownEval = true;
      const isLoss = (m) => m.startsWith("test_");
      const cell = (m, v) => isLoss(m) ? fmtNum(v) : fmtPct(v);
      const delta = (m, a, b) => {
        if (a === undefined || b === undefined || a === null || b === null) return "—";
        const d = b - a, better = isLoss(m) ? d < 0 : d > 0;
        const text = isLoss(m) ? `${d > 0 ? "+" : ""}${fmtNum(d)}` : `${d > 0 ? "+" : ""}${(100 * d).toFixed(1)} pts`;
        return h("span", { class: d === 0 ? "muted" : better ? "good" : "bad" }, text);
      };
      const base = ev.results.base || {}, tuned = ev.results.adapter || {};
      const rowsTable = (rows, id) => h("div", { class: "scroll wide" }, h("table", { id, class: "eval-rows" },
        h("thead", {}, h("tr", {}, ["Row", "Prompt", "Reference", "Base model", "Fine-tuned"].map((t) =>
          h("th", { scope: "col" }, t)))),
        h("tbody", {}, rows.map((r) => h("tr", {},
          h("td", { class: "num" }, r.row),
          h("td", {}, h("pre", { class: "example" }, r.prompt.length > 300 ? "…" + r.prompt.slice(-300) : r.prompt)),
          h("td", {}, h("pre", { class: "example" }, r.reference)),
          ...["base", "adapter"].map((k) => h("td", {}, h("pre", {
            class: `example ${r.scores[k]?.exact_match === 1 ? "good" : ""}` }, r.answers[k]))),
        )))));
      const more = h("div", { id: "eval-more" });
      put(evalBox, h("h2", {}, "Did the fine-tune help? Held-out evaluation"),
        h("p", { class: "muted small" }, `${ev.rows} test rows never seen in training (${ev.task} task); greedy ` +
          `answers of at most ${ev.max_new_tokens} tokens.`),
        h("div", { class: "scroll wide" }, h("table", { id: "eval-table" },
          h("thead", {}, h("tr", {}, ["Metric", "Base model", "Fine-tuned", "Change"].map((t, i) =>
            h("th", { scope: "col", class: i ? "num" : null }, t)))),
          h("tbody", {}, ev.metrics.map((m) => h("tr", { "data-metric": m },
            h("th", { scope: "row" }, m.replace(/_/g, " ")),
            h("td", { class: "num" }, cell(m, base[m])), h("td", { class: "num" }, cell(m, tuned[m])),
            h("td", { class: "num" }, delta(m, base[m], tuned[m]))))))),
        h("h3", {}, `Rows where the answers differ (${ev.differing_rows} of ${ev.rows})`),
        ev.samples.length ? rowsTable(ev.samples, "eval-samples") : h("p", { class: "muted" }, "None: both models " +
          "answered every row the same way."),
        ev.differing_rows > ev.samples.length ? h("button", { type: "button", id: "eval-load-all", onclick: async (e) => {
          e.target.disabled = true;
          try {
            const page = await api(`/v1/finetune/llm/${jobId}/eval?differing=true&limit=200`);
            put(more, rowsTable(page.rows, "eval-all-rows"),
              page.total > page.rows.length ? h("p", { class: "muted small" }, `First ${page.rows.length} of ` +
                `${page.total}; the API lists every row (${job.eval_url}).`) : null);
            e.target.remove();
          } catch (err) { put(more, alertBox(err)); e.target.disabled = false; }
        } }, `Show all ${ev.differing_rows} differing rows`) : null, more);
      evalBox.hidden = false;
    }

    // A classifier's held-out scores (report.json's `classification`): accuracy, macro-F1, each class's precision,
    // recall, F1 and support, and the confusion matrix as a table shaded by the share of each true label's rows.
    let shownClass = false;
    function renderClassification() {
      const c = (job.result || {}).classification;
      if (!c || shownClass) return;
      shownClass = true;
      const labels = c.labels, m = c.confusion_matrix;
      const perClass = h("div", { class: "scroll" }, h("table", { id: "class-table" },
        h("caption", { class: "sr-only" }, "Scores per class"),
        h("thead", {}, h("tr", {}, ["Class", "Precision", "Recall", "F1", "Support"].map((t, i) =>
          h("th", { scope: "col", class: i ? "num" : null }, t)))),
        h("tbody", {}, labels.map((name) => {
          const pc = c.per_class[name] || {};
          return h("tr", { "data-label": name }, h("th", { scope: "row" }, name),
            h("td", { class: "num" }, fmtPct(pc.precision)), h("td", { class: "num" }, fmtPct(pc.recall)),
            h("td", { class: "num" }, fmtNum(pc.f1, 3)), h("td", { class: "num" }, (pc.support ?? 0).toLocaleString()));
        }))));
      const matrix = h("div", { class: "scroll" }, h("table", { id: "confusion-matrix", class: "confusion" },
        h("caption", { class: "sr-only" }, "Confusion matrix: rows are the true labels, columns the predicted ones"),
        h("thead", {}, h("tr", {}, h("td", { class: "corner" }, h("span", { class: "small muted" }, "true ↓ predicted →")),
          labels.map((name) => h("th", { scope: "col", class: "num" }, name)))),
        h("tbody", {}, labels.map((name, i) => {
          const total = m[i].reduce((a, b) => a + b, 0);
          return h("tr", {}, h("th", { scope: "row" }, name), m[i].map((n, j) => {
            const share = total ? n / total : 0;
            return h("td", { class: `num${i === j ? " diag" : ""}`, style: shade(share, i === j),
              title: `${n} of ${total} rows labelled ${name} predicted as ${labels[j]}` }, n.toLocaleString());
          }));
        }))));
      put(classBox, h("h2", {}, "Classifier on the held-out rows"),
        h("p", { class: "muted small" }, `The kept adapter on ${c.examples.toLocaleString()} ${c.split} rows ` +
          `never seen in training${c.loss !== undefined && c.loss !== null ? `; loss ${fmtNum(c.loss)}` : ""}.`),
        h("div", { class: "stats" }, stat("Accuracy", fmtPct(c.accuracy), "stat-accuracy"),
          stat("Macro-F1", fmtNum(c.macro_f1, 3), "stat-macro-f1"), stat("Classes", labels.length)),
        h("div", { class: "class-grid" },
          h("div", {}, h("h3", {}, "Per class"), perClass),
          h("div", {}, h("h3", {}, "Confusion matrix"),
            h("p", { class: "muted small" }, "Rows: the true label; columns: the predicted one. Shading: the share of " +
              "the row's examples."), matrix)));
      classBox.hidden = false;
    }
    // A seq2seq adapter's held-out scores (report.json's `seq2seq`): exact match, chrF and ROUGE-L of its greedy
    // generations, and the first few beside their references.
    let shownSeq2seq = false;
    function renderSeq2seq() {
      const q = (job.result || {}).seq2seq;
      if (!q || shownSeq2seq) return;
      shownSeq2seq = true;
      const samples = q.samples || [];
      put(seq2seqBox, h("h2", {}, "Generations on the held-out rows"),
        h("p", { class: "muted small" }, `The kept adapter's greedy output on ${q.examples.toLocaleString()} ${q.split} ` +
          `rows never seen in training${q.loss !== undefined && q.loss !== null ? `; loss ${fmtNum(q.loss)}` : ""}.`),
        h("div", { class: "stats" }, stat("Exact match", fmtPct(q.exact_match), "stat-exact-match"),
          stat("chrF", fmtNum(q.chrf, 3), "stat-chrf"), stat("ROUGE-L", fmtNum(q.rouge_l, 3), "stat-rouge-l")),
        samples.length ? h("div", { class: "scroll wide", tabindex: "0", role: "region", "aria-label": "Generated samples" },
          h("table", { id: "seq2seq-samples", class: "eval-rows" },
          h("caption", { class: "sr-only" }, "Generated text beside the reference"),
          h("thead", {}, h("tr", {}, ["Reference", "Generated"].map((t) => h("th", { scope: "col" }, t)))),
          h("tbody", {}, samples.map((r) => h("tr", {},
            h("td", {}, h("pre", { class: "example" }, r.reference)),
            h("td", {}, r.prediction ? h("pre", { class: `example ${r.prediction === r.reference ? "good" : ""}` },
              r.prediction) : h("span", { class: "muted small" }, "(nothing: end of sequence first)"))))))) :
          null);
      seq2seqBox.hidden = false;
    }
    // A cell's background from white to a full colour by `share` (green on the diagonal, red off it), and the text
    // colour, black or white, with the higher contrast against it (WCAG relative luminance).
    function shade(share, diagonal) {
      const full = diagonal ? [26, 127, 55] : [198, 40, 40];
      const rgb = full.map((c) => Math.round(255 + (c - 255) * share));
      const lin = rgb.map((c) => { const v = c / 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; });
      const lum = 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2];
      const ink = (lum + 0.05) / 0.05 >= 1.05 / (lum + 0.05) ? "#000" : "#fff";
      return `background:rgb(${rgb.join(",")});color:${ink}`;
    }

    let shownActions = "";
    function renderActions() {
      const sig = `${job.status}|${job.cancel_requested}`;
      if (sig === shownActions) return;
      shownActions = sig;
      put(actions);
      if (ACTIVE.has(job.status)) {
        actions.append(h("button", { type: "button", class: "danger", id: "cancel-job", disabled: job.cancel_requested,
          onclick: async (e) => {
            if (!confirm("Cancel this job? Its progress is discarded.")) return;
            e.target.disabled = true;
            try { job = await api(`/v1/finetune/llm/${jobId}/cancel`, { method: "POST" }); renderProgress(); renderActions(); } catch (err) { put(actionStatus, alertBox(err)); e.target.disabled = false; }
          } }, job.cancel_requested ? "Cancelling…" : "Cancel job"));
      }
      if (job.status === "succeeded") {
        actions.append(
          h("button", { type: "button", class: "primary", id: "download-adapter", onclick: downloadAdapter }, "Download adapter (.zip)"),
          h("button", { type: "button", id: "deploy-open", onclick: openDeploy }, "Deploy…"));
      } else if (!ACTIVE.has(job.status)) {
        actions.append(h("span", { class: "muted" }, job.status === "failed" ? "This job failed." : `This job was ${job.status}.`));
      }
      if (!ACTIVE.has(job.status)) {
        // A new job with this one's settings, in the form (to fix what failed, or to change one setting).
        actions.append(h("a", { class: "button", id: "clone-job", href: `#/new?from=${encodeURIComponent(jobId)}` },
          job.status === "succeeded" ? "Clone…" : "Retry…"));
      }
    }

    // Exports run on the server (minutes for a large model); the page follows each one's stage and downloads the
    // file once it is ready. Finished exports are kept by the server: they are listed again after a reload.
    let exportsShown = false;
    function renderExports() {
      if (exportsShown || job.status !== "succeeded") return;
      exportsShown = true;
      exportBox.hidden = false;
      // GGUF (llama.cpp's converter) is offered for decoder-only text generation: not for a classifier's head nor
      // an encoder-decoder (the export route refuses both).
      const task = (job.result || {}).task || "causal_lm", classifier = task !== "causal_lm";
      const ggufType = h("select", { id: "gguf-type", "aria-describedby": "gguf-type-help" },
        h("option", { value: "q8_0" }, "q8_0 — 8-bit weights (about half the size of f16)"),
        h("option", { value: "f16" }, "f16 — 16-bit weights"));
      const status = h("div", { id: "export-status", "aria-live": "polite" });
      const mergedBtn = h("button", { type: "button", id: "export-merged" }, "Download merged model (.zip)");
      const ggufBtn = h("button", { type: "button", id: "export-gguf" }, "Export GGUF");
      const lines = {};  // export id -> its line in the status list
      const line = (id) => lines[id] || (lines[id] = status.appendChild(h("div", { class: "export-line", "data-export": id })));
      put(exportBox, h("h2", { id: "export-title" }, "Export"),
        h("p", { class: "muted" }, "The adapter merged into its base model: a plain model that runs at the base " +
          "model's speed without PEFT. " + (classifier ? "" : "GGUF is the single-file format of llama.cpp, Ollama and LM Studio.")),
        h("div", { class: "row" }, mergedBtn),
        classifier ? h("p", { class: "small muted", id: "gguf-classifier" },
          `GGUF is for decoder-only text-generation models; this job trained ${task === "seq2seq" ?
            "an encoder-decoder (seq2seq)" : task === "image_classification" ? "an image classifier" : "a classifier"}.`) :
          h("div", { class: "row export-gguf" },
            h("div", { class: "field" }, h("label", { for: "gguf-type" }, "GGUF weights"), ggufType,
              h("span", { class: "help", id: "gguf-type-help" }, "q8_0 keeps nearly all of the quality at half the size.")),
            ggufBtn),
        status);

      async function follow(view, download) {
        const el = line(view.id);
        const what = view.format === "merged" ? "Merged model" : `GGUF (${view.gguf_type})`;
        for (;;) {
          if (view.status === "succeeded") {
            put(el, h("p", { class: "success" }, `${what} ready: ${view.file_name} (${fmtBytes(view.size_bytes)}). `,
              h("button", { type: "button", class: "link", "data-download": view.id, onclick: () => save(view, el) }, "Download")));
            if (download) await save(view, el);
            return;
          }
          if (view.status === "failed") { put(el, alertBox(view.error, `${what} export failed:`)); return; }
          const took = fmtDuration(Date.now() / 1000 - view.started_at);
          put(el, h("p", { class: "muted" }, view.stage === "packing" ?
            `${what}: packing the files… ${view.percent ?? 0}% (${took})` :
            `${what}: merging the adapter into its base${view.format === "gguf" ? " and converting" : ""}… (${took})`));
          await sleep(1000);
          if (!root.isConnected) return;  // the page was left: the export goes on on the server
          view = await api(view.url);
        }
      }
      async function save(view, el) {
        const note = h("p", { class: "muted" }, `Downloading ${view.file_name}…`);
        el.append(note);
        try {
          const r = await api(view.download_url, { raw: true });
          const blob = await r.blob();
          const url = URL.createObjectURL(blob);
          const a = h("a", { href: url, download: view.file_name });
          document.body.append(a); a.click(); a.remove();
          setTimeout(() => URL.revokeObjectURL(url), 60000);
          put(note, `Downloaded ${view.file_name} (${fmtBytes(blob.size)}).`);
          note.className = "success export-downloaded";
        } catch (e) { note.replaceWith(alertBox(e, "Download failed:")); }
      }
      async function start(body, button) {
        button.disabled = true;
        try {
          await follow(await api(`/v1/finetune/llm/${jobId}/exports`, { method: "POST", json: body }), true);
        } catch (e) { put(line(body.format === "merged" ? "merged" : `gguf-${body.gguf_type}`), alertBox(e, "Export failed:")); }
        button.disabled = false;
      }
      mergedBtn.addEventListener("click", () => start({ format: "merged" }, mergedBtn));
      ggufBtn.addEventListener("click", () => start({ format: "gguf", gguf_type: ggufType.value }, ggufBtn));
      api(`/v1/finetune/llm/${jobId}/exports`).then((r) => r.exports.forEach((v) => follow(v, false)))
        .catch((e) => put(status, alertBox(e, "Exports could not be listed:")));
    }

    async function downloadAdapter() {
      put(actionStatus, h("p", { class: "muted" }, "Preparing the download…"));
      try {
        const r = await api(`/v1/finetune/llm/${jobId}/adapter`, { raw: true });
        const blob = await r.blob();
        const url = URL.createObjectURL(blob);
        const a = h("a", { href: url, download: `adapter-${jobId}.zip` });
        document.body.append(a); a.click(); a.remove();
        setTimeout(() => URL.revokeObjectURL(url), 60000);
        put(actionStatus, h("p", { class: "success", id: "download-done" }, `Downloaded adapter-${jobId}.zip (${fmtBytes(blob.size)}).`));
      } catch (e) { put(actionStatus, alertBox(e, "Download failed:")); }
    }

    function openDeploy() {
      const spec = job.spec || {};
      const name = h("input", { type: "text", id: "deploy-name", value: job.suffix || `job-${jobId.slice(0, 8)}`,
        "aria-describedby": "deploy-name-help" });
      const tpl = h("textarea", { id: "deploy-template", rows: 2, "aria-describedby": "deploy-template-help" });
      tpl.placeholder = "empty: the adapter's training template";
      const out = h("div", { "aria-live": "polite", id: "deploy-result" });
      const go = h("button", { type: "submit", class: "primary", id: "deploy-submit" }, "Deploy");
      const form = h("form", { class: "note", "aria-label": "Deploy this adapter" },
        h("h2", {}, "Deploy this adapter"),
        h("div", { class: "grid" },
          h("div", { class: "field" }, h("label", { for: "deploy-name" }, "Deployment name"), name,
            h("span", { class: "help", id: "deploy-name-help" }, "Apps that use the OpenAI API name it as their ",
              h("code", {}, "model"), ".")),
          h("div", { class: "field" }, h("label", { for: "deploy-template" }, "Completion prompt template"), tpl,
            h("span", { class: "help", id: "deploy-template-help" },
              "How a plain prompt is wrapped before the model continues it. Leave it empty to use the adapter's " +
              "training template (recommended); chat messages are always rendered as the adapter was trained."))),
        h("div", { class: "row", style: "margin-top:10px" }, go), out);
      form.addEventListener("submit", async (e) => {
        e.preventDefault();
        go.disabled = true;
        put(out, h("p", { class: "muted" }, "Creating the deployment…"));
        try {
          const d = await api("/v1/deploy/llm", { method: "POST", json: { basemodel_path: spec.pretrainedmodel_config.model_path,
            loramodel_path: jobId, deployment_name: name.value.trim() || null, prompt_template: tpl.value.trim() || null } });
          const info = h("div", {});
          put(out, h("div", { class: "success" },
            h("p", {}, "Deployment ", h("code", {}, d.deployment_name), " is ", h("span", { id: "deploy-status" }, badge(d.status)), "."),
            h("p", { class: "small" }, "Its own API token (shown once): ", h("code", { id: "deploy-token" }, d.api_auth_token),
              ". OpenAI base URL: ", h("code", {}, d.URL), "; your API key works too."), info));
          for (let i = 0; i < 600; i++) {
            const cur = await api(`/v1/deploy/status/${d.deployment_id}`);
            const ds = $("#deploy-status", out); if (ds) put(ds, badge(cur.status));
            if (cur.status !== "building") {
              if (cur.status === "live") {
                put(info, h("div", { class: "row" }, h("a", { class: "button primary", id: "open-playground",
                  href: `#/playground?adapter=${encodeURIComponent(d.deployment_id)}` }, "Open in the playground"),
                  h("a", { class: "button", id: "open-deployment", href: `#/deployments/${encodeURIComponent(d.deployment_id)}` },
                    "Deployment page (serving figures)")));
              } else put(info, alertBox(cur.error || `deployment ${cur.status}`));
              break;
            }
            await sleep(1000);
          }
        } catch (err) {
          put(out, alertBox(err, "Not deployed:"));
          go.disabled = false;
        }
      });
      put(deployBox, form);
      name.focus();
    }

    async function refresh() {
      job = await api(`/v1/finetune/llm/${jobId}`);
      await datasetNames([job.data_path]);
      renderProgress();
      drawCharts();
      renderActions();
      renderExports();
      renderEvaluation();
      renderClassification();
      renderSeq2seq();
      put(details, h("summary", {}, "Job spec and result"),
        h("pre", { class: "example" }, JSON.stringify({ spec: job.spec, result: job.result }, null, 2)));
      return ACTIVE.has(job.status) ? 2000 : 0;
    }
    await refresh();
    every(2000, refresh);
    onLeave(streamEvents(jobId, onEvent, () => { refresh(); }));
  }

  // ------------------------------------------------------------------------------------------ compare
  // Two or more jobs side by side: their loss curves on one chart, their settings (those that differ marked) and
  // their results. The URL names the jobs (#/compare?jobs=ID,ID), so a comparison can be bookmarked or shared.
  const COMPARE_COLORS = ["#2952cc", "#d62728", "#2ca02c", "#9467bd", "#e377c2", "#8c564b", "#17becf", "#7f7f7f"];
  async function pageCompare(root, parts, params) {
    document.title = "Compare jobs · tuneforge";
    const ids = [...new Set((params.get("jobs") || "").split(",").map((x) => x.trim()).filter(Boolean))];
    root.append(h("p", { class: "small" }, h("a", { href: "#/jobs" }, "← All jobs")), h("h1", {}, "Compare jobs"));
    if (ids.length < 2) {
      root.append(h("div", { class: "panel" }, h("p", {}, "Choose two or more jobs to compare: tick them in the ",
        h("a", { href: "#/jobs" }, "jobs list"), ".")));
      return;
    }
    const jobs = await Promise.all(ids.map((id) => api(`/v1/finetune/llm/${encodeURIComponent(id)}`)));
    const curves = await Promise.all(ids.map(jobCurves));
    await datasetNames(jobs.map((j) => j.data_path));
    const names = uniqueNames(jobs);
    const color = (i) => COMPARE_COLORS[i % COMPARE_COLORS.length];

    const fig = h("figure", { class: "chart", id: "compare-figure" }, h("figcaption", {}, "Loss"));
    const draw = () => {
      const series = jobs.flatMap((j, i) => [
        { name: `${names[i]} train`, color: color(i), points: curves[i].train },
        { name: `${names[i]} validation`, color: color(i), points: curves[i].evals, dots: true, dash: true }]);
      const summary = "Loss by step of " + jobs.map((j, i) => `${names[i]}: training ${curveText(curves[i].train)}, ` +
        `validation ${curveText(curves[i].evals)}`).join("; ") + ".";
      put(fig, h("figcaption", {}, "Loss (solid: training, dashed with dots: validation)"),
        lineChart({ id: "compare-chart", yLabel: "loss", width: boxWidth(fig, 900), height: 300, summary, series }),
        h("div", { class: "legend", id: "compare-legend", "aria-hidden": "true" }, jobs.map((j, i) =>
          h("span", { "data-job": j.job_id }, h("i", { style: `background:${color(i)}` }), names[i]))));
    };
    const head = () => h("thead", {}, h("tr", {}, h("th", { scope: "col" }, ""),
      jobs.map((j, i) => h("th", { scope: "col", "data-job": j.job_id },
        h("i", { class: "swatch", style: `background:${color(i)}`, "aria-hidden": "true" }),
        h("a", { href: `#/jobs/${j.job_id}` }, names[i])))));

    // Settings: every field of the specs; those that differ between the jobs are marked (not by colour alone).
    const flat = jobs.map((j) => flattenSpec(j.spec));
    const keys = [...new Set(flat.flatMap((f) => Object.keys(f)))].sort(specOrder);
    const differs = (k) => new Set(flat.map((f) => JSON.stringify(f[k] ?? null))).size > 1;
    const nDiffer = keys.filter(differs).length;
    const onlyDiff = h("input", { type: "checkbox", id: "only-differing" });
    const settings = h("div", { class: "scroll wide" });
    const drawSettings = () => put(settings, h("table", { id: "compare-settings" }, head(),
      h("tbody", {}, keys.filter((k) => !onlyDiff.checked || differs(k)).map((k) => {
        const d = differs(k);
        return h("tr", { "data-setting": k, class: d ? "differs" : null },
          h("th", { scope: "row" }, h("code", {}, k), d ? h("span", { class: "tag differs-tag" }, "differs") : null),
          flat.map((f) => h("td", { class: "mono" }, fmtSetting(f[k]))));
      }))));
    onlyDiff.addEventListener("change", drawSettings);

    // Results: what each run came to.
    const results = jobs.map(compareResults);
    const rowsOf = [...new Set(results.flatMap((r) => Object.keys(r)))];
    const resultsTable = h("div", { class: "scroll wide" }, h("table", { id: "compare-results" }, head(),
      h("tbody", {}, rowsOf.map((k) => h("tr", { "data-result": k }, h("th", { scope: "row" }, k),
        results.map((r) => h("td", { class: "num" }, r[k] ?? "—")))))));

    root.append(h("div", { class: "panel" }, fig),
      h("section", { class: "panel", "aria-labelledby": "compare-results-title" },
        h("h2", { id: "compare-results-title" }, "Results"), resultsTable),
      h("section", { class: "panel", "aria-labelledby": "compare-settings-title" },
        h("h2", { id: "compare-settings-title" }, "Settings"),
        h("p", { class: "muted small", id: "compare-differ-count" },
          nDiffer ? `${nDiffer} setting${nDiffer === 1 ? "" : "s"} differ${nDiffer === 1 ? "s" : ""} (marked).` : "The jobs have the same settings."),
        h("div", { class: "field check" }, onlyDiff, h("label", { for: "only-differing" }, "Show only the settings that differ")),
        settings));
    draw();
    drawSettings();
    const onResize = debounce(draw, 150);
    window.addEventListener("resize", onResize);
    onLeave(() => { onResize.cancel(); window.removeEventListener("resize", onResize); });
  }

  // A job's training and validation loss by step, from its events (a resumed job's later values count).
  async function jobCurves(id) {
    const train = [], evals = [];
    const upsert = (arr, x, y) => { while (arr.length && arr[arr.length - 1][0] >= x) arr.pop(); arr.push([x, y]); };
    for (let after = 0; ;) {
      const page = await api(`/v1/finetune/llm/${encodeURIComponent(id)}/events?after=${after}&limit=5000`);
      for (const ev of page.events) {
        if (ev.type === "train" && ev.loss !== undefined && ev.loss !== null) upsert(train, ev.step, ev.loss);
        else if (ev.type === "eval" && ev.eval_loss !== undefined && ev.eval_loss !== null) upsert(evals, ev.step, ev.eval_loss);
      }
      if (!page.events.length || page.next_after === after) return { train, evals };
      after = page.next_after;
    }
  }
  const curveText = (pts) => (pts.length ? `${fmtNum(pts[0][1])} to ${fmtNum(pts[pts.length - 1][1])} over ${pts.length} points` : "none");
  // Job names (suffixes) can repeat: a repeated one gets its id's start.
  function uniqueNames(jobs) {
    const count = new Map();
    for (const j of jobs) count.set(jobName(j), (count.get(jobName(j)) || 0) + 1);
    return jobs.map((j) => (count.get(jobName(j)) > 1 ? `${jobName(j)} (${j.job_id.slice(0, 8)})` : jobName(j)));
  }
  function flattenSpec(spec, prefix = "", out = {}) {
    for (const [k, v] of Object.entries(spec || {})) {
      if (prefix === "" && (k === "suffix" || k === "logging_config")) continue;  // the name; wandb bookkeeping
      const key = prefix ? `${prefix}.${k}` : k;
      if (v && typeof v === "object" && !Array.isArray(v)) flattenSpec(v, key, out);
      else out[key] = v;
    }
    return out;
  }
  // The model, data and training sections in the order the form shows them; fields alphabetically within.
  const SECTION_ORDER = ["pretrainedmodel_config", "data_config", "training_config"];
  function specOrder(a, b) {
    const rank = (k) => { const i = SECTION_ORDER.indexOf(k.split(".")[0]); return i < 0 ? SECTION_ORDER.length : i; };
    return rank(a) - rank(b) || a.localeCompare(b);
  }
  function fmtSetting(v) {
    if (v === null || v === undefined) return "—";
    if (typeof v === "number") return String(v);  // as the spec has it: 0.0001, not a rounded 1.00e-4
    if (typeof v === "string" && v.startsWith("/")) return shortPath(v);
    return typeof v === "string" ? v : JSON.stringify(v);
  }
  function compareResults(j) {
    const r = j.result || {}, l = j.losses, p = j.progress, out = {};
    out.Status = badge(j.status);
    out.Steps = p.total_steps ? `${p.step} / ${p.total_steps}` : String(p.step);
    out["Final training loss"] = fmtNum(l.train_loss);
    out["Final validation loss"] = fmtNum(l.eval_loss);
    out["Kept step"] = l.best_step === null || l.best_step === undefined ? "—" : String(l.best_step);
    out["Kept validation loss"] = fmtNum(l.best_eval_loss);
    if (r.wall_time_seconds) out["Training time"] = fmtDuration(r.wall_time_seconds);
    const c = r.classification;
    if (c) { out.Accuracy = fmtPct(c.accuracy); out["Macro-F1"] = fmtNum(c.macro_f1); }
    const ev = j.evaluation;
    if (ev && ev.results) {
      for (const m of ev.metrics || Object.keys(ev.results.adapter || {})) {
        const f = m.startsWith("test_") ? fmtNum : fmtPct;
        out[`Held-out ${m.replace(/_/g, " ")}: base → fine-tuned`] =
          `${f((ev.results.base || {})[m])} → ${f((ev.results.adapter || {})[m])}`;
      }
    }
    return out;
  }

  // ------------------------------------------------------------------------------------------ deployment
  // One deployment: what it serves, and while it is live its serving figures, refreshed every 2 s: counters since
  // the server started, tokens/s from the last two readings, latency percentiles and the engine's queue now.
  async function pageDeployment(root, id) {
    document.title = "Deployment · tuneforge";
    const nameSlot = h("code", { id: "deployment-name" }, id.slice(0, 8));
    const statusSlot = h("span", { id: "deployment-status" });
    root.append(h("p", { class: "small" }, h("a", { href: "#/playground" }, "← Playground")),
      h("h1", {}, "Deployment ", nameSlot, " ", statusSlot));
    const info = h("div", { class: "panel", id: "deployment-info" });
    const serving = h("section", { class: "panel", id: "serving-metrics", "aria-labelledby": "serving-title", hidden: true });
    root.append(info, serving);
    let prev = null, rate = null, d = null;
    const ms = (x) => (x === null || x === undefined ? "—" : x < 1 ? `${(1000 * x).toFixed(x < 0.01 ? 1 : 0)} ms` : `${fmtNum(x, 3)} s`);
    const stat = (k, v, sid, title) => h("div", { class: "stat", id: sid, title }, h("div", { class: "k" }, k), h("div", { class: "v" }, v));
    const pct = (l) => `${ms(l.p50)} / ${ms(l.p90)} / ${ms(l.p99)}`;
    every(2000, async () => {
      d = await api(`/v1/deploy/status/${encodeURIComponent(id)}`);
      document.title = `Deployment ${d.deployment_name} · tuneforge`;
      nameSlot.textContent = d.deployment_name;
      put(statusSlot, badge(d.status));
      const job = /^[0-9a-f-]{36}$/.test(d.loramodel_path || "") ? d.loramodel_path : null;
      put(info, h("dl", { class: "facts" },
        h("dt", {}, "Base model"), h("dd", {}, shortPath(d.basemodel_path)),
        h("dt", {}, "Adapter"), h("dd", {}, job ? h("a", { href: `#/jobs/${job}` }, `job ${job.slice(0, 8)}`) : (d.loramodel_path || "none (the base model)")),
        h("dt", {}, "Answers"), h("dd", { id: "deployment-answers" },
          d.task === "classification" ? ["POST /v1/classify: ", (d.labels || []).join(", ")] :
          d.task === "image_classification" ? ["POST /v1/classify (image data URLs): ", (d.labels || []).join(", ")] :
          d.task === "seq2seq" ? "/v1/completions (an encoder-decoder: no chat)" :
          d.task ? "/v1/chat/completions and /v1/completions" : "(known once live)"),
        h("dt", {}, "OpenAI base URL"), h("dd", { class: "mono" }, d.URL), h("dt", {}, "model"), h("dd", { class: "mono" }, d.model),
        h("dt", {}, "Live since"), h("dd", {}, fmtTime(d.live_at))),
        d.error ? alertBox(d.error) : null,
        d.status === "live" ? h("a", { class: "button primary", id: "deployment-playground",
          href: `#/playground?adapter=${encodeURIComponent(d.deployment_id)}` }, "Open in the playground") : null);
      if (d.status !== "live" || d.task !== "causal_lm") {
        serving.hidden = d.status !== "live";
        if (d.status === "live") put(serving, h("h2", { id: "serving-title" }, "Serving"),
          h("p", { class: "muted" }, d.task === "seq2seq" ?
            "A seq2seq model generates with transformers outside the engine's queue: no engine figures." :
            "A classifier answers each request at once, without a generation queue: no generation figures."));
        return d.status === "building" ? 1500 : 0;
      }
      const m = await api(`/v1/deploy/metrics/${encodeURIComponent(id)}`);
      if (prev && m.time > prev.time) rate = (m.generated_tokens - prev.generated_tokens) / (m.time - prev.time);
      prev = m;
      serving.hidden = false;
      put(serving, h("h2", { id: "serving-title" }, "Serving"),
        h("p", { class: "small muted" }, "Since the server started; refreshed every 2 s. The queue and batch are the " +
          "engine's, shared by the deployments of this base model."),
        h("div", { class: "stats" },
          stat("Requests", String(m.requests), "metric-requests",
            Object.entries(m.requests_by_finish_reason).map(([k, v]) => `${k}: ${v}`).join(", ")),
          stat("Tokens generated", String(m.generated_tokens), "metric-tokens"),
          stat("Tokens/s now", rate === null ? "—" : fmtNum(rate, 3), "metric-rate"),
          stat("Time to first token p50 / p90 / p99", pct(m.ttft_seconds), "metric-ttft"),
          stat("Time per output token p50 / p90 / p99", pct(m.tpot_seconds), "metric-tpot"),
          stat("Queue depth", String(m.queue_depth), "metric-queue"),
          stat("Running requests", String(m.running_requests), "metric-running"),
          stat("Loaded adapters", `${m.loaded_adapters} of ${m.registered_adapters}`, "metric-adapters"),
          m.rejected_requests ? stat("Refused (queue full)", String(m.rejected_requests), "metric-rejected") : null));
      return 2000;
    });
  }

  // ------------------------------------------------------------------------------------------ playground
  async function pagePlayground(root, parts, params) {
    document.title = "Playground · tuneforge";
    root.append(h("h1", {}, "Playground"),
      h("p", { class: "muted" }, "Talk to a deployed fine-tune and its base model side by side. Replies appear as " +
        "they are generated; Stop ends them."));
    const adapterSel = h("select", { id: "adapter-deployment" });
    const baseSel = h("select", { id: "base-deployment" });
    const baseHelp = h("div", { class: "small", id: "base-help", "aria-live": "polite" });
    const maxTokens = h("input", { type: "number", id: "max-tokens", min: "1", max: "2048", value: "64" });
    const temperature = h("input", { type: "number", id: "temperature", min: "0", max: "2", step: "0.1", value: "0" });
    const modeSel = h("select", { id: "chat-mode", "aria-describedby": "mode-note" },
      h("option", { value: "completion" }, "Training prompt template"),
      h("option", { value: "chat" }, "Chat"));
    const modeNote = h("div", { class: "note small", id: "mode-note", "aria-live": "polite" });
    const deployTable = h("div", { id: "deployments", class: "scroll wide" });
    root.append(h("div", { class: "panel" }, h("h2", {}, "Models"),
      h("div", { class: "grid" },
        h("div", { class: "field" }, h("label", { for: "adapter-deployment" }, "Fine-tuned deployment"), adapterSel),
        h("div", { class: "field" }, h("label", { for: "base-deployment" }, "Base model deployment"), baseSel, baseHelp),
        h("div", { class: "field" }, h("label", { for: "chat-mode" }, "Prompt format"), modeSel),
        h("div", { class: "field" }, h("label", { for: "max-tokens" }, "Max new tokens"), maxTokens),
        h("div", { class: "field" }, h("label", { for: "temperature" }, "Temperature"), temperature,
          h("span", { class: "help" }, "0 answers greedily (the same answer every time)."))),
      modeNote,
      h("details", { style: "margin-top:8px" }, h("summary", {}, "All deployments"), deployTable)));

    const panes = ["adapter", "base"].map((which) => {
      const msgs = h("div", { class: "msgs", id: `chat-${which}`, role: "log", "aria-live": "polite",
        "aria-label": which === "adapter" ? "Fine-tuned model conversation" : "Base model conversation" });
      const head = h("header", {}, which === "adapter" ? "Fine-tuned" : "Base model");
      return { which, msgs, head, history: [], el: h("section", { class: "chat", "aria-label": head.textContent }, head, msgs) };
    });
    const message = h("textarea", { id: "chat-input", rows: 3, placeholder: "Type a message; Ctrl+Enter sends",
      "aria-describedby": "chat-input-help" });
    const send = h("button", { type: "submit", class: "primary", id: "chat-send" }, "Send to both");
    const stop = h("button", { type: "button", id: "chat-stop", disabled: true }, "Stop");
    const clear = h("button", { type: "button", id: "chat-clear" }, "Clear");
    const chatForm = h("form", { class: "panel", "aria-label": "Send a message" },
      h("div", { class: "field" }, h("label", { for: "chat-input" }, "Message"), message,
        h("span", { class: "help", id: "chat-input-help" }, "Sent to both models; each keeps its own conversation.")),
      h("div", { class: "row", style: "margin-top:8px" }, send, stop, clear));
    const chatArea = h("div", { id: "chat-area" }, h("div", { class: "two", style: "margin-bottom:16px" }, panes.map((p) => p.el)), chatForm);
    // A classifier deployment answers POST /v1/classify: a text in, its label and every class's probability out.
    const classifyText = h("textarea", { id: "classify-input", rows: 3, placeholder: "Type a text; Ctrl+Enter classifies",
      "aria-describedby": "classify-input-help" });
    const classifyBtn = h("button", { type: "submit", class: "primary", id: "classify-send" }, "Classify");
    const classifyOut = h("div", { id: "classify-result", "aria-live": "polite" });
    const classifyHead = h("h2", { id: "classify-title" }, "Classify a text");
    const classifyForm = h("form", { class: "panel", id: "classify-box", hidden: true, "aria-labelledby": "classify-title" },
      classifyHead,
      h("div", { class: "field" }, h("label", { for: "classify-input" }, "Text"), classifyText,
        h("span", { class: "help", id: "classify-input-help" }, "Sent to the classifier, which answers the most likely " +
          "label and the probability of each label.")),
      h("div", { class: "row", style: "margin-top:8px" }, classifyBtn), classifyOut);
    // An image classifier takes image data URLs, which a text box cannot send: a note instead of a playground.
    const imageNote = h("div", { class: "panel note", id: "classify-image-note", hidden: true });
    root.append(chatArea, classifyForm, imageNote);
    classifyForm.addEventListener("submit", async (e) => {
      e.preventDefault();
      const d = selected(adapterSel), text = classifyText.value.trim();
      if (!d || !text) { put(classifyOut, alertBox(d ? "Type a text to classify." : "Choose a classifier deployment.")); return; }
      classifyBtn.disabled = true;
      try {
        const r = await api("/v1/classify", { method: "POST", json: { model: d.deployment_name, input: text } });
        const res = r.data[0], labels = d.labels || res.probs.map((_, i) => `class ${i}`);
        const order = res.probs.map((p, i) => [labels[i], p]).sort((a, b) => b[1] - a[1]);
        put(classifyOut, h("p", { id: "classify-label" }, "Label: ", h("strong", {}, res.label),
            ` (${fmtPct(Math.max(...res.probs))})`),
          h("ul", { class: "probs", id: "classify-probs", "aria-label": "Probability of each label" },
            order.map(([label, p]) => h("li", { "data-label": label, class: label === res.label ? "best" : null },
              h("span", { class: "prob-label" }, label),
              h("span", { class: "prob-bar", "aria-hidden": "true" }, h("span", { style: `width:${(100 * p).toFixed(1)}%` })),
              h("span", { class: "prob-value mono" }, fmtPct(p))))),
          h("p", { class: "small muted" }, `${r.usage.prompt_tokens} tokens.`));
      } catch (err) { put(classifyOut, alertBox(err, "Not classified:")); }
      classifyBtn.disabled = false;
    });
    classifyText.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); classifyForm.requestSubmit(); }
    });

    let deployments = [];
    let modeChosen = false;  // the user picked the prompt format: it is no longer set from the adapter
    const wanted = params.get("adapter");
    function fill(sel, list, empty, keep) {
      const prev = keep || sel.value;
      put(sel, h("option", { value: "" }, empty), list.map((d) => h("option", { value: d.deployment_id },
        `${d.deployment_name} (${d.status})${d.loramodel_path ? "" : " · " + d.basemodel_path}`)));
      if (list.some((d) => d.deployment_id === prev)) sel.value = prev;
      else if (list.length && !prev) sel.value = list[0].deployment_id;
    }
    const usable = (d) => d.status === "live" || d.status === "building";
    const selected = (sel) => deployments.find((x) => x.deployment_id === sel.value);
    // An adapter trained with a prompt template is deployed with that template (its card, tuneforge_adapter.json);
    // one trained on chat data keeps the bare "{prompt}{completion}" and answers chat as it was trained.
    const BARE = "{prompt}{completion}";
    const trainedTemplate = (d) => (d && d.loramodel_path && d.prompt_template && d.prompt_template !== BARE ?
      d.prompt_template : null);
    const promptPart = (t) => t.split("{completion}")[0];

    // The fields of a chat (base model, prompt format, max tokens, temperature) mean nothing to a classifier.
    const chatFields = [baseSel, modeSel, maxTokens, temperature].map((el) => el.closest(".field"));
    function updateTask() {
      const a = selected(adapterSel);
      const images = !!a && a.task === "image_classification";
      const classifier = images || (!!a && a.task === "classification");
      chatArea.hidden = classifier;
      classifyForm.hidden = !classifier || images;
      imageNote.hidden = !images;
      for (const f of chatFields) if (f) f.hidden = classifier;
      modeNote.hidden = classifier;
      if (images) {
        put(imageNote, h("p", {}, h("code", {}, a.deployment_name), " is an image classifier: the playground " +
          "classifies texts only. Send images to ", h("code", {}, "POST /v1/classify"), " as data URLs (",
          h("code", {}, '"input": ["data:image/png;base64,..."]'), "); each answer has the label and every class's " +
          "probability."));
      } else if (classifier) put(classifyHead, "Classify a text with ", h("code", {}, a.deployment_name));
      return classifier;
    }

    function updateMode() {
      if (updateTask()) return;
      const a = selected(adapterSel), b = selected(baseSel), tpl = trainedTemplate(a);
      const seq2seq = !!a && a.task === "seq2seq";
      modeSel.disabled = seq2seq;  // an encoder-decoder answers /v1/completions only
      if (seq2seq) {
        modeSel.value = "completion";
        put(modeNote, h("strong", {}, "Prompt format: "), "none: ", h("code", {}, a.deployment_name), " is an " +
          "encoder-decoder (seq2seq). Your message goes to its encoder as it is (with any task prefix it was trained " +
          "with, e.g. \"translate English to German: \") through /v1/completions; chat is not offered.");
        return;
      }
      if (!modeChosen && a && (a.status === "live" || tpl)) modeSel.value = tpl ? "completion" : "chat";
      modeSel.options[0].textContent = tpl ? "Training prompt template (as the adapter was trained)" :
        "Completion (each deployment's prompt template)";
      modeSel.options[1].textContent = tpl ? "Chat (each model's chat template)" : "Chat (as the adapter was trained)";
      if (!a) { put(modeNote, "Choose a fine-tuned deployment."); return; }
      if (a.status !== "live" && !tpl) { put(modeNote, "The deployment is starting; its prompt format is known once it is live."); return; }
      const baseTpl = b && b.prompt_template;
      if (modeSel.value === "completion") {
        put(modeNote, h("strong", {}, "Prompt format: "), tpl ? "the adapter's training template " : "the deployment's prompt template ",
          h("code", { id: "mode-template" }, promptPart(a.prompt_template || BARE)), ". Your message fills its placeholder" +
          " and the model continues from there. ",
          b ? (baseTpl === a.prompt_template ? "The base model gets the same prompt." :
            ["The base model deployment wraps it with its own template ", h("code", {}, promptPart(baseTpl || BARE)), "."]) : "");
      } else {
        put(modeNote, h("strong", {}, "Prompt format: "), tpl ? "chat. The adapter was trained on the template " : "chat, as the adapter was trained" +
          " (the model's chat template).",
          tpl ? [h("code", {}, promptPart(tpl)), ": your last message fills it; earlier turns are not part of its prompt. "] : " ",
          b ? "The base model uses its own chat template." : "");
      }
    }
    modeSel.addEventListener("change", () => { modeChosen = true; updateMode(); });

    function updateHeads() {
      for (const p of panes) {
        const d = selected(p.which === "adapter" ? adapterSel : baseSel);
        put(p.head, p.which === "adapter" ? "Fine-tuned" : "Base model", d ? [": ", h("code", {}, d.deployment_name), " ", badge(d.status)] : "");
      }
      const a = selected(adapterSel);
      put(baseHelp);
      if (a && a.task !== "classification" && !deployments.some((x) => !x.loramodel_path && x.basemodel_path === a.basemodel_path && usable(x))) {
        const btn = h("button", { type: "button", id: "deploy-base", onclick: async () => {
          btn.disabled = true;
          try {
            // The same prompt template as the adapter's deployment: both models then see the same prompt.
            const d = await api("/v1/deploy/llm", { method: "POST", json: { basemodel_path: a.basemodel_path,
              deployment_name: `${a.deployment_name}-base`.slice(0, 128), prompt_template: trainedTemplate(a) } });
            await load(d.deployment_id);
          } catch (e) { put(baseHelp, alertBox(e)); }
        } }, "Deploy the base model for comparison");
        baseHelp.append(h("span", { class: "muted" }, "No deployment of this adapter's base model alone. "), btn);
      }
      updateMode();
    }
    async function load(selectBase) {
      const data = await api("/v1/deploy/list");
      deployments = data.deployments;
      const adapters = deployments.filter((d) => d.loramodel_path && usable(d));
      const bases = deployments.filter((d) => !d.loramodel_path && usable(d));
      fill(adapterSel, adapters, adapters.length ? "(choose)" : "(no adapter deployed: deploy one from a job page)", wanted);
      const a = selected(adapterSel);
      const match = a && bases.find((d) => d.basemodel_path === a.basemodel_path);
      fill(baseSel, bases, bases.length ? "(none)" : "(no base model deployed)", selectBase || (baseSel.value ? null : match && match.deployment_id));
      put(deployTable, deployments.length ? h("table", {},
        h("thead", {}, h("tr", {}, ["Name", "Status", "Base model", "Adapter", "Created", "Actions"].map((t) => h("th", { scope: "col" }, t)))),
        h("tbody", {}, deployments.map((d) => h("tr", {}, h("td", { class: "mono" },
          h("a", { href: `#/deployments/${encodeURIComponent(d.deployment_id)}` }, d.deployment_name)), h("td", {}, badge(d.status)),
          h("td", {}, shortPath(d.basemodel_path)), h("td", { class: "mono" }, d.loramodel_path || "—"), h("td", {}, fmtTime(d.created_at)),
          h("td", {}, d.status === "live" || d.status === "building" ? h("button", { type: "button", class: "danger",
            "aria-label": `Terminate ${d.deployment_name}`, onclick: async () => {
              if (!confirm(`Terminate ${d.deployment_name}?`)) return;
              await api("/v1/deploy/terminate", { method: "POST", json: { deployment_id: d.deployment_id } }); load();
            } }, "Terminate") : ""))))) : h("p", { class: "muted" }, "No deployments yet."));
      updateHeads();
      return deployments.some((d) => d.status === "building") ? 1500 : 10000;
    }
    every(1500, () => load());
    adapterSel.addEventListener("change", () => { modeChosen = false; updateHeads(); });
    baseSel.addEventListener("change", updateHeads);

    function bubble(role, text, extra) {
      return h("div", { class: `msg ${role}` }, h("span", { class: "who" }, role === "user" ? "You" : role === "error" ? "Error" : "Model"),
        text, extra || null);
    }

    /* One streamed reply: the OpenAI-compatible endpoint's server-sent events (`data: {chunk}` ... `data: [DONE]`),
       each chunk's text appended to the bubble as it arrives. Returns the text; throws on an error event. */
    async function streamReply(path, body, onText, signal) {
      const r = await api(path, { method: "POST", json: { ...body, stream: true }, raw: true, signal,
        headers: { Accept: "text/event-stream" } });
      const reader = r.body.getReader();
      const dec = new TextDecoder();
      let buf = "", text = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return text;
        buf += dec.decode(value, { stream: true });
        let i;
        while ((i = buf.search(/\r?\n\r?\n/)) >= 0) {
          const block = buf.slice(0, i);
          buf = buf.slice(i).replace(/^\r?\n\r?\n/, "");
          const data = block.split(/\r?\n/).filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart()).join("\n");
          if (!data) continue;
          if (data === "[DONE]") return text;
          const obj = JSON.parse(data);
          if (obj.error) throw new Error(obj.error.message || String(obj.error));
          const c = (obj.choices || [])[0];
          const piece = c ? (c.delta ? c.delta.content : c.text) : null;
          if (piece) { text += piece; onText(text); }
        }
      }
    }

    let running = [];  // AbortControllers of the replies being generated
    async function ask(p, text) {
      const d = selected(p.which === "adapter" ? adapterSel : baseSel);
      if (!d) return;
      p.msgs.append(bubble("user", text));
      const out = h("span", { class: "reply" }, "…");
      const pending = bubble("assistant", out);
      pending.setAttribute("aria-busy", "true");
      p.msgs.append(pending);
      p.msgs.scrollTop = p.msgs.scrollHeight;
      const common = { model: d.deployment_name, max_tokens: Number(maxTokens.value) || 64,
        temperature: Number(temperature.value) || 0 };
      const ctrl = new AbortController();
      running.push(ctrl);
      const chat = modeSel.value === "chat";
      const show = (t) => {
        const atEnd = p.msgs.scrollTop + p.msgs.clientHeight >= p.msgs.scrollHeight - 8;
        out.textContent = t;
        if (atEnd) p.msgs.scrollTop = p.msgs.scrollHeight;
      };
      let reply = "";
      try {
        if (chat) p.history.push({ role: "user", content: text });
        reply = chat ?
          await streamReply("/v1/chat/completions", { ...common, messages: p.history }, (t) => { reply = t; show(t); }, ctrl.signal) :
          await streamReply("/v1/completions", { ...common, prompt: text }, (t) => { reply = t; show(t); }, ctrl.signal);
        if (reply === "") out.textContent = "(empty reply)";
      } catch (e) {
        if (e.name === "AbortError") {
          if (reply === "") out.textContent = "";
          pending.append(h("span", { class: "stopped muted small" }, " (stopped)"));
        } else {
          if (chat) p.history.pop();
          pending.replaceWith(bubble("error", e.message));
          reply = null;
        }
      } finally {
        running = running.filter((c) => c !== ctrl);
        pending.removeAttribute("aria-busy");
      }
      if (chat && reply !== null) p.history.push({ role: "assistant", content: reply });
      p.msgs.scrollTop = p.msgs.scrollHeight;
    }
    chatForm.addEventListener("submit", async (e) => {
      e.preventDefault();
      const text = message.value.trim();
      if (!text) { message.focus(); return; }
      if (!adapterSel.value && !baseSel.value) { chatForm.append(alertBox("Choose a deployment first.")); return; }
      send.disabled = true;
      stop.disabled = false;
      message.value = "";
      try { await Promise.all(panes.map((p) => ask(p, text))); } finally {
        send.disabled = false; stop.disabled = true; message.focus();
      }
    });
    stop.addEventListener("click", () => { for (const c of running) c.abort(); });
    onLeave(() => { for (const c of running) c.abort(); });
    message.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); chatForm.requestSubmit(); }
    });
    clear.addEventListener("click", () => { for (const p of panes) { p.history = []; put(p.msgs); } });
  }

  // ------------------------------------------------------------------------------------------ start
  $("#menu").addEventListener("click", () => {
    const open = document.body.classList.toggle("menu-open");
    $("#menu").setAttribute("aria-expanded", String(open));
  });
  $("#signout").addEventListener("click", () => { auth.signOut(); location.hash = "#/signin"; });
  window.addEventListener("storage", (e) => {
    // Signed out in another tab: this one stops working with the key too.
    if (e.key === SIGNOUT && e.newValue) { auth.clear(); location.hash = "#/signin"; }
  });
  window.addEventListener("hashchange", route);
  route();
})();
