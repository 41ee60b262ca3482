// The live page: polls the page server's own API every 2 s and draws what it says. Every judgement (limits,
// over-limit, the banner's status) is made by the server (dashboard/page.py); this file only renders it.
"use strict";

const POLL_MS = 2000;
const RED = "#f85149", MUTED = "#8b949e", GRID = "#30363d", TEXT = "#e6edf3";
const COLORS = ["#58a6ff", "#d2a8ff", "#3fb950", "#ffa657", "#79c0ff", "#ff7b72", "#a5d6ff", "#e3b341"];
const LANES = ["update", "gates", "canary", "release", "drill", "rollback"];
const OUTCOME_COLORS = { ok: "#3fb950", failed: RED, rollback: "#ff2d55", info: MUTED };

function fmt(value, unit) {
  if (value === null || value === undefined) return "—";
  const sig = (x, d = 4) => Number(x.toPrecision(d)).toLocaleString("en-US", { maximumFractionDigits: 6 });
  switch (unit) {
    case "percent": return `${value.toFixed(1)} %`;
    case "percentunit": return `${sig(value * 100)} %`;
    case "reqps": return `${sig(value)} req/s`;
    case "s": return Math.abs(value) < 1 ? `${sig(value * 1000)} ms` : `${sig(value)} s`;
    case "bytes": {
      const units = ["B", "KiB", "MiB", "GiB", "TiB"];
      let i = 0, v = value;
      while (Math.abs(v) >= 1024 && i < units.length - 1) { v /= 1024; i += 1; }
      return `${sig(v)} ${units[i]}`;
    }
    case "none": return "";
    default: return sig(value);
  }
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value; else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

function limitText(s) {
  if (s.limit === null) return "no limit";
  const word = { above: "limit", below: "min", none: "threshold" }[s.bad];
  return `${word} ${fmt(s.limit, s.unit) || s.limit} (${s.limit_legend})`;
}

const layoutBase = () => ({
  paper_bgcolor: "rgba(0,0,0,0)", plot_bgcolor: "rgba(0,0,0,0)", font: { color: TEXT, size: 11 },
  margin: { l: 52, r: 8, t: 4, b: 22 }, showlegend: false,
  xaxis: { type: "date", gridcolor: GRID, zeroline: false, hoverformat: "%H:%M:%S",
           tickformatstops: [{ dtickrange: [null, 60000], value: "%H:%M:%S" }, { dtickrange: [60000, null], value: "%H:%M" }] },
  yaxis: { gridcolor: GRID, zeroline: false, rangemode: "tozero" },
});
const plotConfig = { displayModeBar: false, responsive: true, staticPlot: false };

function tickFormat(unit) {
  return { percentunit: ".1%", bytes: ".3s", s: ".3s" }[unit] || "";
}

function drawTimeseries(card, panel, reply) {
  const now = card.querySelector(".now");
  now.replaceChildren(...panel.series.map((s) => el("span", { class: s.over && s.current ? "over-text" : "" },
    `${s.legend}${s.current ? "" : " (ended)"}: `, el("b", {}, fmt(s.last, s.unit)), ` · ${limitText(s)}`)));
  const chart = card.querySelector(".chart");
  chart.hidden = !panel.series.length;
  if (!panel.series.length) return;
  const traces = panel.series.map((s, i) => ({
    x: s.t.map((t) => t * 1000), y: s.v, name: s.legend, mode: "lines", type: "scatter",
    line: { color: s.over ? RED : COLORS[i % COLORS.length], width: 2 },
  }));
  // Data younger than the window (a Prometheus started minutes ago) fills the chart rather than its last pixels.
  const first = Math.min(...panel.series.map((s) => (s.t.length ? s.t[0] : Infinity)));
  const start = Math.max(reply.now - reply.window_seconds, first - 30) * 1000, end = reply.now * 1000;
  for (const limit of panel.limits) {
    const x = limit.constant !== null ? [start, end] : limit.t.map((t) => t * 1000);
    const y = limit.constant !== null ? [limit.constant, limit.constant] : limit.v;
    traces.push({ x, y, name: limit.legend, mode: "lines", type: "scatter", hoverinfo: "name+y",
      line: { color: RED, width: 1.5, dash: "dash" } });
  }
  const layout = layoutBase();
  layout.xaxis.range = [start, end];
  layout.yaxis.tickformat = tickFormat(panel.unit);
  layout.yaxis.ticksuffix = { percent: " %", reqps: "/s" }[panel.unit] || "";
  Plotly.react(chart, traces, layout, plotConfig);
}

function drawStat(card, panel) {
  const stats = el("div", { class: "stats" });
  for (const s of panel.series) {
    stats.append(el("div", { class: `stat${s.over ? " over-text" : ""}` },
      el("div", { class: "value" }, fmt(s.last, s.unit) || String(s.last)),
      el("div", { class: "label" }, s.legend),
      el("div", { class: "limit" }, limitText(s))));
  }
  card.querySelector(".content").replaceChildren(stats);
}

function drawTable(card, panel) {
  // A table of identities or alerts (unit "none") has no number to show: the row itself is the fact.
  const numbers = panel.unit !== "none";
  const head = numbers ? [el("th", { class: "num" }, "now"), el("th", { class: "num" }, "limit")] : [];
  const table = el("table", {}, el("tr", {}, el("th", {}, ""), ...head, el("th", {}, "")));
  // A table is "now": a series that ended (the previous candidate's gates, a retired version) is history, which
  // the timeline shows; only a panel whose every series ended keeps them (and is marked stale by the server).
  const rows = panel.series.some((s) => s.current) ? panel.series.filter((s) => s.current) : panel.series;
  for (const s of rows) {
    const verdict = s.limit === null ? "" : s.over ? (numbers ? "✗ over" : "✗") : "✓";
    const cells = numbers ? [el("td", { class: "num" }, fmt(s.last, s.unit)),
      el("td", { class: "num" }, s.limit === null ? "—" : fmt(s.limit, s.unit))] : [];
    table.append(el("tr", { class: s.over ? "over" : "" }, el("td", {}, s.legend), ...cells, el("td", {}, verdict)));
  }
  card.querySelector(".content").replaceChildren(panel.series.length ? table : "");
}

function drawPanel(panel, reply) {
  let card = document.getElementById(`panel-${panel.id}`);
  if (!card) {
    card = el("section", { id: `panel-${panel.id}`, class: `card span-${panel.width}`, "data-kind": panel.kind },
      el("h2", {}, panel.title),
      el("p", { class: "nolimit" }, panel.no_limit ? `no limit: ${panel.no_limit}` : ""),
      el("div", { class: "state" }), el("div", { class: "now" }), el("div", { class: "content" }));
    if (panel.kind === "timeseries") card.append(el("div", { class: "chart" }));
    document.getElementById("panels").append(card);
  }
  card.dataset.state = panel.state;
  card.classList.toggle("over", panel.series.some((s) => s.over));
  const state = card.querySelector(".state");
  state.className = `state ${panel.state}`;
  state.hidden = panel.state === "ok";
  state.textContent = panel.state === "ok" ? "" : panel.message || panel.state;
  ({ timeseries: drawTimeseries, stat: drawStat, table: drawTable })[panel.kind](card, panel, reply);
}

function drawBanner(reply) {
  const banner = document.getElementById("banner");
  banner.dataset.status = reply.status;
  const count = (severity) => reply.problems.filter((p) => p.severity === severity).length;
  const title = {
    green: "ALL CLEAR", amber: `LOOK SOON: ${count("amber")} over a limit`,
    red: `ACTION NEEDED: ${count("red")} problem${count("red") === 1 ? "" : "s"}` +
      (count("amber") ? `, ${count("amber")} over a limit` : ""),
  };
  document.getElementById("banner-title").textContent = `${title[reply.status]} — stack ${reply.stack}`;
  document.getElementById("banner-meta").textContent =
    `updated ${new Date(reply.now * 1000).toLocaleTimeString()} · prometheus ${reply.endpoints.prometheus || "not running"}` +
    ` · alertmanager ${reply.endpoints.alertmanager || "not running"}`;
  const list = document.getElementById("problems");
  list.replaceChildren(...reply.problems.map((p) => el("li", { class: p.severity }, p.text)));
  document.title = `${reply.status === "green" ? "OK" : reply.status.toUpperCase()} · ${reply.stack} · mlrelease`;
}

function drawTimeline(reply) {
  const chart = document.getElementById("timeline-chart");
  const events = reply.events;
  const traces = Object.entries(OUTCOME_COLORS).map(([outcome, color]) => {
    const mine = events.filter((e) => e.outcome === outcome);
    return {
      x: mine.map((e) => e.at * 1000), y: mine.map((e) => e.lane), text: mine.map((e) => e.label),
      name: outcome, type: "scatter", mode: "markers", hoverinfo: "text+x",
      marker: { color, size: outcome === "rollback" ? 18 : 10, symbol: outcome === "rollback" ? "x-thin-open" : "circle",
                line: { width: outcome === "rollback" ? 4 : 0, color } },
    };
  });
  const durations = events.filter((e) => e.end && e.lane === "update");
  for (const e of durations) {
    traces.push({ x: [e.at * 1000, e.end * 1000], y: [e.lane, e.lane], mode: "lines", hoverinfo: "skip",
      line: { color: OUTCOME_COLORS[e.outcome], width: 6 }, opacity: 0.5, type: "scatter" });
  }
  const layout = layoutBase();
  layout.margin.l = 64;
  const first = events.length ? events[0].at : reply.now - 3600;
  layout.xaxis.range = [Math.min(first - 60, reply.now - 3600) * 1000, (reply.now + 60) * 1000];
  layout.yaxis = { type: "category", categoryorder: "array", categoryarray: LANES, range: [-0.5, LANES.length - 0.5],
                   gridcolor: GRID };
  Plotly.react(chart, traces, layout, plotConfig);
  const list = document.getElementById("timeline-events");
  const latest = events.slice(-10).reverse();
  list.replaceChildren(...latest.map((e) => el("li", { class: `event outcome-${e.outcome}`, "data-lane": e.lane },
    `${new Date(e.at * 1000).toLocaleTimeString()} ${e.label}`)));
  if (!events.length) list.replaceChildren(el("li", { class: "event outcome-info" }, "no data: no release event recorded"));
  document.getElementById("timeline-notes").textContent = reply.notes.join(" · ");
}

function unreachable(what, error) {
  const banner = document.getElementById("banner");
  banner.dataset.status = "red";
  document.getElementById("banner-title").textContent = "ACTION NEEDED: the dashboard server is not answering";
  document.getElementById("problems").replaceChildren(el("li", { class: "red" }, `${what}: ${error}`));
}

async function poll(path, draw) {
  try {
    const response = await fetch(path, { cache: "no-store" });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    draw(await response.json());
  } catch (error) {
    unreachable(path, error);
  }
  setTimeout(() => poll(path, draw), POLL_MS);
}

poll("/api/panels", (reply) => {
  drawBanner(reply);
  for (const panel of reply.panels) drawPanel(panel, reply);
});
poll("/api/timeline", drawTimeline);
