"""The migration dashboard page: one HTML document with its style and script inline.

The page holds no data and needs no credential to load. Its script fetches the numbers from the
admin JSON API with the admin token the user pastes into the page (kept in sessionStorage: gone
when the tab closes, never in a URL, a cookie or a log), or with no token at all when the browser
presents an admin client certificate. A Content-Security-Policy with the hashes of the inline
style and script lets nothing else run, load or frame the page.
"""

from __future__ import annotations

import base64
import hashlib

REFRESH_SECONDS = 30

STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em 2em;color:#1b1b1b}
h1{font-size:1.5em;margin:0 0 .4em}h2{font-size:1.15em;margin:1.4em 0 .4em}
form{margin:.4em 0}input,select,button{font:inherit}
#status{min-height:1.4em;color:#555}#status.error{color:#b03a2e;font-weight:600}
.cards{display:flex;flex-wrap:wrap;gap:.6em}
.card{border:1px solid #ccc;border-radius:6px;padding:.4em .8em;min-width:7em}
.card .label{display:block;color:#555;font-size:.85em}.card .value{font-size:1.4em;font-variant-numeric:tabular-nums}
table{border-collapse:collapse;margin:.4em 0}
th,td{border:1px solid #ccc;padding:.2em .5em;text-align:left;vertical-align:top}
th{background:#f2f2f2}td.num{text-align:right;font-variant-numeric:tabular-nums}.weak{color:#b03a2e;font-weight:600}
#devices{width:100%;table-layout:fixed}#devices td{overflow-wrap:anywhere}
.c-device{width:13%}.c-group{width:7%}.c-state{width:6%}.c-time{width:10%}.c-client{width:15%}.c-weak{width:9%}
svg text{font:11px system-ui,sans-serif;fill:#333}
.progress{display:flex;align-items:center;gap:.5em;white-space:nowrap}
"""

SCRIPT = r"""
"use strict";
(() => {
  const KEY = "gateway.adminToken";
  const STATES = ["legacy", "mapped", "migrated", "native", "retired"];
  const SERIES = ["legacy", "mapped", "migrated"];  // the trend's bands, bottom to top
  const COLOURS = {legacy: "#c0392b", mapped: "#d68910", migrated: "#1e8449"};
  const SVG = "http://www.w3.org/2000/svg";
  const PAGE = 100;
  const SIGN_IN = "Paste an admin token (gateway admin-token add NAME), or use an admin client certificate.";
  const $ = (id) => document.getElementById(id);
  let nextAfter = null;
  let loading = false;

  class ApiError extends Error {
    constructor(status, text) { super(text || ("HTTP " + status)); this.status = status; }
  }

  async function getJSON(path) {
    const token = sessionStorage.getItem(KEY);
    const headers = token ? {Authorization: "Bearer " + token} : {};
    const response = await fetch(path, {headers, cache: "no-store", credentials: "same-origin"});
    if (!response.ok) throw new ApiError(response.status, (await response.text()).trim());
    return response.json();
  }

  function status(text, error) {
    $("status").textContent = text;
    $("status").className = error ? "error" : "";
  }

  function show(value) { return value === null || value === undefined || value === "" ? "-" : String(value); }

  function cell(row, value, className) {
    const td = document.createElement("td");
    td.textContent = show(value);
    if (className) td.className = className;
    row.appendChild(td);
  }

  function svg(name, attributes, parent) {
    const element = document.createElementNS(SVG, name);
    for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, String(value));
    parent.appendChild(element);
    return element;
  }

  function drawChart(trend) {
    // A stacked area: legacy at the bottom, mapped on it, migrated on top; the top edge is the SCEP fleet.
    const width = 720, height = 260, left = 56, right = 110, top = 16, bottom = 36;
    const plotW = width - left - right, plotH = height - top - bottom;
    let peak = 1;
    for (const p of trend) peak = Math.max(peak, SERIES.reduce((sum, s) => sum + p[s], 0));
    const step = trend.length > 1 ? plotW / (trend.length - 1) : 0;
    const x = (i) => (left + (trend.length > 1 ? i * step : plotW / 2)).toFixed(1);
    const y = (v) => (top + plotH - (v / peak) * plotH).toFixed(1);
    const chart = document.createElementNS(SVG, "svg");
    for (const [k, v] of Object.entries({id: "trend-chart", viewBox: `0 0 ${width} ${height}`, width, height,
      role: "img", "aria-label": "devices per state per day, stacked", "data-points": trend.length,
      "data-peak": peak})) chart.setAttribute(k, v);
    svg("line", {x1: left, y1: top + plotH, x2: left + plotW, y2: top + plotH, stroke: "#888"}, chart);
    svg("line", {x1: left, y1: top, x2: left, y2: top + plotH, stroke: "#888"}, chart);
    svg("text", {x: left - 6, y: top + 4, "text-anchor": "end"}, chart).textContent = String(peak);
    svg("text", {x: left - 6, y: top + plotH + 4, "text-anchor": "end"}, chart).textContent = "0";
    if (trend.length) {
      svg("text", {x: left, y: height - 12}, chart).textContent = trend[0].day;
      const last = svg("text", {x: left + plotW, y: height - 12, "text-anchor": "end"}, chart);
      last.textContent = trend[trend.length - 1].day;
    }
    let lower = trend.map(() => 0);
    SERIES.forEach((series, index) => {
      const upper = trend.map((p, i) => lower[i] + p[series]);
      const edge = trend.map((p, i) => `${x(i)},${y(upper[i])}`);
      const base = trend.map((p, i) => `${x(i)},${y(lower[i])}`).reverse();
      svg("polygon", {class: "band", "data-series": series, fill: COLOURS[series], "fill-opacity": 0.8,
        stroke: COLOURS[series], points: [...edge, ...base].join(" ")}, chart);
      trend.forEach((p, i) => {
        const mark = svg("circle", {"data-series": series, "data-day": p.day, "data-value": p[series],
          "data-top": upper[i], cx: x(i), cy: y(upper[i]), r: 2, fill: COLOURS[series]}, chart);
        svg("title", {}, mark).textContent = `${p.day} ${series}: ${p[series]}`;
      });
      const legendY = top + 14 + (SERIES.length - 1 - index) * 18;  // the legend stacks as the bands do
      svg("rect", {x: width - right + 12, y: legendY - 9, width: 10, height: 10, fill: COLOURS[series]}, chart);
      svg("text", {x: width - right + 28, y: legendY}, chart).textContent = series;
      lower = upper;
    });
    $("chart").replaceChildren(chart);
  }

  function progressCell(row, group) {
    // Migrated so far (of the group's SCEP devices), as a bar, and the days left to its sunset.
    const td = document.createElement("td");
    const bar = document.createElement("div");
    bar.className = "progress";
    const percent = group.percent_migrated === null ? 0 : group.percent_migrated;
    bar.dataset.percent = String(percent);
    const label = percent.toFixed(1) + " % migrated";
    const graph = svg("svg", {width: 120, height: 12, role: "img", "aria-label": label}, bar);
    svg("rect", {width: 120, height: 12, fill: "#e5e5e5"}, graph);
    svg("rect", {class: "done", width: (1.2 * percent).toFixed(1), height: 12, fill: COLOURS.migrated}, graph);
    let text = group.percent_migrated === null ? "no SCEP device" : percent.toFixed(1) + " %";
    if (group.sunset_at) {
      const days = Math.ceil((Date.parse(group.sunset_at) - Date.now()) / 86400000);
      text += days > 0 ? ` · sunset in ${days} d` : " · sunset passed";
    }
    bar.appendChild(document.createTextNode(text));
    td.appendChild(bar);
    row.appendChild(td);
  }

  function fillSummary(summary) {
    for (const state of STATES) $("total-" + state).textContent = String(summary.totals[state]);
    $("total-total").textContent = String(summary.totals.total);
    const percent = summary.totals.percent_migrated;
    $("percent-migrated").textContent = percent === null ? "-" : percent.toFixed(1) + " %";
    $("to-move-total").textContent = String(summary.to_move_total);
    $("silent-total").textContent = String(summary.silent_total);
    $("generated-at").textContent = summary.generated_at;
    const body = $("groups").tBodies[0];
    body.replaceChildren();
    const select = $("filter-group");
    const chosen = select.value;
    select.replaceChildren(new Option("every group", ""));
    for (const group of summary.groups) {
      const row = body.insertRow();
      row.dataset.group = group.name === null ? "" : group.name;
      cell(row, group.name === null ? "(no group)" : group.name);
      for (const key of [...STATES, "total"]) cell(row, group[key], "num");
      cell(row, group.percent_migrated === null ? null : group.percent_migrated.toFixed(1), "num");
      progressCell(row, group);
      cell(row, group.sunset_at);
      cell(row, group.cut_off, "num");
      if (group.name !== null) select.add(new Option(group.name, group.name));
    }
    select.value = [...select.options].some((o) => o.value === chosen) ? chosen : "";
    drawChart(summary.trend);
  }

  function deviceQuery(after) {
    const query = new URLSearchParams({limit: String(PAGE)});
    if ($("filter-state").value) query.set("state", $("filter-state").value);
    if ($("filter-group").value) query.set("group", $("filter-group").value);
    if ($("filter-silent").checked) query.set("silent", "true");
    if (after) query.set("after", String(after));
    return "/admin/api/devices?" + query.toString();
  }

  async function loadDevices(append) {
    const page = await getJSON(deviceQuery(append ? nextAfter : null));
    const body = $("devices").tBodies[0];
    if (!append) body.replaceChildren();
    for (const device of page.devices) {
      const row = body.insertRow();
      row.dataset.id = String(device.id);
      for (const key of ["identity", "group", "state", "last_scep_at", "certificate_not_after"]) cell(row, device[key]);
      const client = device.client;
      cell(row, [client.name + " (EST: " + client.est_client + ")", client.cipher, client.digest, client.challenge]
        .filter(Boolean).join(" / "));
      cell(row, device.weak.join(", "), device.weak.length ? "weak" : "");
      cell(row, device.actions.join("; "));
    }
    nextAfter = page.next_after;
    $("more").hidden = nextAfter === null;
    $("devices-shown").textContent = String(body.rows.length);
  }

  function clear() {  // nothing stays on screen for someone who is not (or no longer) signed in
    for (const element of document.querySelectorAll(".card .value")) element.textContent = "-";
    $("groups").tBodies[0].replaceChildren();
    $("devices").tBodies[0].replaceChildren();
    $("chart").replaceChildren();
    $("devices-shown").textContent = "0";
    $("more").hidden = true;
  }

  async function refresh() {
    if (loading) return;
    loading = true;
    try {
      fillSummary(await getJSON("/admin/api/migration/summary"));
      if ($("devices").tBodies[0].rows.length <= PAGE) await loadDevices(false);  // keep the pages shown
      status("updated " + new Date().toLocaleTimeString(), false);
    } catch (error) {
      if (error.status === 401 || error.status === 403) clear();
      if (error.status === 401) status(SIGN_IN, true);
      else status("could not load the numbers: " + error.message, true);
    } finally {
      loading = false;
    }
  }

  $("auth").addEventListener("submit", (event) => {
    event.preventDefault();
    const token = $("token-input").value.trim();
    $("token-input").value = "";
    if (token) sessionStorage.setItem(KEY, token);
    refresh();
  });
  $("forget").addEventListener("click", () => { sessionStorage.removeItem(KEY); refresh(); });
  for (const id of ["filter-state", "filter-group", "filter-silent"]) {
    $(id).addEventListener("change", () => loadDevices(false).catch((e) => status(e.message, true)));
  }
  $("more").addEventListener("click", () => loadDevices(true).catch((e) => status(e.message, true)));
  refresh();
  setInterval(refresh, Number(document.body.dataset.refreshSeconds) * 1000);
})();
"""

_CARDS = "".join(
    f'<div class="card"><span class="label">{label}</span><span class="value" id="{ident}">-</span></div>'
    for label, ident in (
        ("legacy", "total-legacy"),
        ("mapped", "total-mapped"),
        ("migrated", "total-migrated"),
        ("native (on EST from the start)", "total-native"),
        ("retired", "total-retired"),
        ("total", "total-total"),
        ("migrated (of the SCEP fleet)", "percent-migrated"),
        ("still to move", "to-move-total"),
        ("silent on EST", "silent-total"),
    )
)
_STATE_OPTIONS = "".join(
    f'<option value="{value}">{label}</option>'
    for value, label in (
        ("legacy,mapped", "still to move"),
        ("legacy", "legacy"),
        ("mapped", "mapped"),
        ("migrated", "migrated"),
        ("native", "native"),
        ("retired", "retired"),
        ("", "every state"),
    )
)

PAGE = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,"><title>SCEP-to-EST migration</title><style>{STYLE}</style></head>
<body data-refresh-seconds="{REFRESH_SECONDS}">
<h1>SCEP-to-EST migration</h1>
<form id="auth" autocomplete="off"><label>Admin token <input type="password" id="token-input"></label>
<button type="submit">Use token</button> <button type="button" id="forget">Forget token</button></form>
<p id="status" role="status">loading…</p>
<section id="summary"><div class="cards">{_CARDS}</div>
<p>Numbers of <span id="generated-at">-</span>; the page refreshes every {REFRESH_SECONDS} s.</p></section>
<section><h2>Trend per day</h2><div id="chart"></div></section>
<section><h2>Groups and their SCEP sunset</h2><table id="groups"><thead><tr><th>group</th><th>legacy</th>
<th>mapped</th><th>migrated</th><th>native</th><th>retired</th><th>total</th><th>% migrated</th>
<th>progress to sunset</th><th>sunset</th><th>cut off</th></tr></thead><tbody></tbody></table></section>
<section><h2>Devices</h2><form id="filters"><label>State <select id="filter-state">{_STATE_OPTIONS}</select></label>
<label>Group <select id="filter-group"><option value="">every group</option></select></label>
<label><input type="checkbox" id="filter-silent"> silent on EST only</label></form>
<table id="devices"><colgroup><col class="c-device"><col class="c-group"><col class="c-state"><col class="c-time">
<col class="c-time"><col class="c-client"><col class="c-weak"><col class="c-actions"></colgroup>
<thead><tr><th>device</th><th>group</th><th>state</th><th>last SCEP</th>
<th>certificate expires</th><th>SCEP client</th><th>weak</th><th>next actions</th></tr></thead><tbody></tbody></table>
<p><span id="devices-shown">0</span> shown <button type="button" id="more" hidden>Show more</button></p></section>
<script>{SCRIPT}</script>
</body></html>
"""


def _csp_hash(source: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(source.encode("utf-8")).digest()).decode("ascii") + "'"


CONTENT_SECURITY_POLICY = (
    f"default-src 'none'; script-src {_csp_hash(SCRIPT)}; style-src {_csp_hash(STYLE)}; "
    "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
