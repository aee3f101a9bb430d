// serveplane dashboard: follows /-/dashboard/events (server-sent events) and redraws the
// page from each snapshot. No framework, no build step; charts are small inline SVGs.
// Stable data-* attributes (data-endpoint, data-backend, data-weight, data-replica,
// data-state, data-rollout-step) are what the browser tests read.
"use strict";

(function () {
  const params = new URLSearchParams(window.location.search);
  const key = params.get("key");
  const feedUrl = "/-/dashboard/events" + (key ? "?key=" + encodeURIComponent(key) : "");
  const PALETTE = ["#2f6fde", "#e07b1a", "#1f9d55", "#8a4fd1", "#d1343a", "#0f9bb0", "#a5781c", "#c2418f"];
  const colours = new Map();

  function colour(backend) {
    if (!colours.has(backend)) colours.set(backend, PALETTE[colours.size % PALETTE.length]);
    return colours.get(backend);
  }

  function esc(value) {
    return String(value).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
  }

  function pct(x, digits) {
    return x === null || x === undefined ? "–" : (100 * x).toFixed(digits === undefined ? 1 : digits).replace(/\.0+$/, "") + "%";
  }

  function num(x, unit) {
    if (x === null || x === undefined) return "–";
    const v = Math.abs(x) >= 100 ? x.toFixed(0) : Math.abs(x) >= 10 ? x.toFixed(1) : x.toFixed(2);
    return v + (unit || "");
  }

  function count(x) {
    return x === null || x === undefined ? "–" : Number.isInteger(x) ? String(x) : x.toFixed(1);
  }

  function clock(t) {
    return new Date(t * 1000).toLocaleTimeString([], { hour12: false });
  }

  // -- endpoints ------------------------------------------------------------------------
  function splitBar(traffic) {
    const entries = Object.entries(traffic).sort((a, b) => a[0].localeCompare(b[0]));
    const segs = entries.map(([b, w]) =>
      `<div class="split-seg" data-backend="${esc(b)}" data-weight="${w}" title="${esc(b)}: ${pct(w, 2)}"
            style="flex-grow:${w};background:${colour(b)}">${w >= 0.08 ? esc(b) + " " + pct(w) : ""}</div>`).join("");
    const legend = entries.map(([b, w]) =>
      `<span><i class="swatch" style="background:${colour(b)}"></i>${esc(b)} <b>${pct(w, 2)}</b></span>`).join("");
    return `<div class="split">${segs}</div><div class="legend">${legend}</div>`;
  }

  function shadowsTable(ep) {
    const names = Object.keys(ep.shadows).sort();
    if (!names.length) return "";
    const rows = names.map((b) => {
      const a = (ep.shadow_agreement || {})[b];
      const agreement = a && a.agreement !== null ? pct(a.agreement) : "–";
      const counts = a ? `${a.compared} compared · ${a.errors} errors · ${a.dropped} dropped` : "no copies yet";
      return `<div class="shadow" data-shadow="${esc(b)}"><span><i class="swatch" style="background:${colour(b)}"></i>${esc(b)}</span>
        <span>${pct(ep.shadows[b])} copied</span><span>agreement <b>${agreement}</b></span><span class="muted">${counts}</span></div>`;
    }).join("");
    return `<div class="shadows"><div class="muted">shadows</div>${rows}</div>`;
  }

  const GUARD_READING = {
    max_error_rate: ["error_rate", (x) => pct(x, 2)],
    max_latency_ratio: ["latency_ratio", (x) => num(x, "×")],
    min_shadow_agreement: ["shadow_agreement", (x) => pct(x, 2)],
    min_requests: ["canary_requests", (x) => String(x)],
  };

  function guardRows(r) {
    // a finished rollout has no live readings: show those of its last decision
    const lastRead = (r.history || []).slice().reverse().find((h) => h.readings && Object.keys(h.readings).length);
    const readings = r.readings || (lastRead ? lastRead.readings : {});
    return Object.entries(r.guards || {}).filter(([g]) => g in GUARD_READING).map(([g, limit]) => {
      const [field, fmt] = GUARD_READING[g];
      const reading = readings[field];
      const isMin = g.startsWith("min_");
      let fill = 0, over = false;
      if (reading !== undefined && reading !== null && limit) {
        fill = Math.min(1, reading / limit);
        over = isMin ? (g !== "min_requests" && reading < limit) : reading > limit;
      }
      const shown = reading === undefined || reading === null ? "–" : fmt(reading);
      return `<div class="guard" data-guard="${esc(g)}"><span>${esc(g)}</span>
        <span class="meter${over ? " over" : ""}"><i style="width:${(100 * fill).toFixed(1)}%"></i></span>
        <span class="mono">${shown} / ${fmt(limit)}</span></div>`;
    }).join("");
  }

  function rolloutPanel(r) {
    if (!r) return "";
    const steps = r.steps.map((w, i) => {
      const failed = r.state === "rolled_back" || r.state === "aborted";
      const cls = i < r.step || r.state === "succeeded" ? "done" : i === r.step ? (failed ? "failed" : "current") : "";
      return `<span class="step ${cls}">${pct(w)}</span>`;
    }).join("");
    const phase = r.step < 0 ? "shadow phase" : `step ${r.step + 1}/${r.steps.length}`;
    const history = (r.history || []).slice(-8).reverse().map((h) =>
      `<li><span class="mono">${clock(h.at)}</span> ${esc(h.decision)}</li>`).join("");
    return `<div class="rollout" data-rollout-step="${r.step}" data-rollout-state="${esc(r.state)}">
      <div class="card-head"><b>rollout → ${esc(r.backend)}</b>
        <span class="state state-${esc(r.state)}">${esc(r.state)}</span>
        <span>${phase}, canary weight <b>${pct(r.weight)}</b></span></div>
      <div class="steps">${steps}</div>
      ${r.reason ? `<div class="muted">${esc(r.reason)}</div>` : ""}
      ${guardRows(r)}
      <ol class="history">${history}</ol></div>`;
  }

  function endpointCard(name, ep) {
    return `<div class="card" data-endpoint="${esc(name)}">
      <div class="card-head"><h3>${esc(name)}</h3><span class="mono muted">${esc(ep.route || "(no route)")}</span>
        <span class="right muted">${esc(ep.router)}</span></div>
      ${splitBar(ep.traffic)}${shadowsTable(ep)}${rolloutPanel(ep.rollout)}</div>`;
  }

  // -- backends -------------------------------------------------------------------------
  function sparkline(title, values, times, format, cls) {
    const w = 200, h = 40;
    const last = values.length ? values[values.length - 1] : null;
    const finite = values.filter((v) => v !== null && v !== undefined);
    const max = finite.length ? Math.max(...finite) : 0;
    const top = max > 0 ? max : 1;  // an all-zero series is a line along the bottom, not nothing
    let line = "", area = "", dots = "";
    if (values.length > 1 && finite.length) {
      const t0 = times[0], span = Math.max(1, times[times.length - 1] - t0);
      let open = false, first = 0, prevX = 0;
      values.forEach((v, i) => {
        const x = ((times[i] - t0) / span) * w;
        if (v === null || v === undefined) {
          if (open) area += `L${prevX.toFixed(1)},${h}L${first.toFixed(1)},${h}Z`;
          open = false;
          return;
        }
        const y = h - 2 - (v / top) * (h - 6);
        const alone = !open && (i + 1 >= values.length || values[i + 1] === null || values[i + 1] === undefined);
        if (alone) dots += `<circle cx="${x.toFixed(1)}" cy="${y.toFixed(1)}" r="1.8"/>`;
        line += (open ? "L" : "M") + x.toFixed(1) + "," + y.toFixed(1);
        area += (open ? "L" : `M${x.toFixed(1)},${h}L`) + x.toFixed(1) + "," + y.toFixed(1);
        if (!open) first = x;
        open = true;
        prevX = x;
      });
      if (open) area += `L${prevX.toFixed(1)},${h}L${first.toFixed(1)},${h}Z`;
    }
    return `<div class="chart ${cls || ""}" title="${esc(title)}: now ${format(last)}, max ${format(max || null)}">
      <div class="chart-head"><span class="muted">${esc(title)}</span> <span class="value">${format(last)}</span></div>
      <svg viewBox="0 0 ${w} ${h}" preserveAspectRatio="none"><path class="area" d="${area}"/><path class="line" d="${line}"/>${dots}</svg></div>`;
  }

  function charts(series) {
    if (!series || !series.t.length) return `<div class="muted" style="margin-top:8px">no traffic figures yet</div>`;
    const minutes = Math.max(1, Math.round((series.t[series.t.length - 1] - series.t[0]) / 60));
    return `<div class="charts" title="last ${minutes} min">
      ${sparkline("req/s", series.rate, series.t, (x) => num(x))}
      ${sparkline("errors", series.error_rate, series.t, (x) => pct(x, 2), "err")}
      ${sparkline("p50", series.p50_ms, series.t, (x) => num(x, " ms"))}
      ${sparkline("p99", series.p99_ms, series.t, (x) => num(x, " ms"))}</div>`;
  }

  function backendCard(tag, b) {
    const running = b.replicas.filter((r) => r.state === "RUNNING" || r.state === "UPDATING").length;
    const rows = b.replicas.map((r) => `<tr data-replica="${esc(r.tag)}" data-state="${esc(r.state)}">
        <td class="mono">${esc(r.tag)}</td><td><span class="badge b-${esc(r.state)}">${esc(r.state)}</span></td>
        <td class="mono">${esc(r.node || "–")}</td><td>${r.gpu ? num(r.gpu) : "–"}</td>
        <td>${r.in_flight === null ? "–" : r.in_flight}</td></tr>`).join("");
    return `<div class="card" data-backend="${esc(tag)}">
      <div class="card-head"><h3><i class="swatch" style="background:${colour(tag)}"></i>${esc(tag)}</h3>
        <span><b>${running}</b>/${b.target_replicas} running</span>
        ${b.autoscaling ? '<span class="muted">autoscaling</span>' : ""}
        ${b.deleting ? '<span class="muted">deleting</span>' : ""}
        <span class="right muted">in flight ${count(b.in_flight)} · queued ${count(b.queued)}</span></div>
      ${b.failure ? `<div class="failure">! ${esc(b.failure)}</div>` : ""}
      <table class="replicas"><tr><th>replica</th><th>state</th><th>node</th><th>GPU</th><th>in flight</th></tr>${rows}</table>
      ${charts(b.series)}</div>`;
  }

  function scalingTable(events) {
    if (!events.length) return `<p class="muted">none yet</p>`;
    const rows = events.slice().reverse().map((e) => `<tr><td class="mono">${clock(e.timestamp)}</td>
      <td>${esc(e.backend)}</td><td>${e.from} → ${e.to}</td><td>${esc(e.reason)}</td></tr>`).join("");
    return `<table><tr><th>at</th><th>backend</th><th>replicas</th><th>reason</th></tr>${rows}</table>`;
  }

  // -- the page -------------------------------------------------------------------------
  function render(s) {
    Object.keys(s.backends).sort().forEach(colour);  // stable colours across endpoints and backends
    document.getElementById("namespace").textContent = "namespace " + s.namespace;
    const st = s.store;
    document.getElementById("store").textContent =
      `store ${st.kv_store} · epoch ${st.epoch} · fencing ${st.fencing}` + (st.refused ? ` · ${st.refused} refused` : "");
    document.getElementById("updated").textContent = "updated " + clock(s.at);
    const warning = document.getElementById("warning");
    warning.hidden = !st.checkpoint_warning;
    warning.textContent = st.checkpoint_warning ? "checkpoint: " + st.checkpoint_warning : "";
    const eps = Object.entries(s.endpoints);
    document.getElementById("endpoints").innerHTML = eps.length
      ? eps.map(([n, ep]) => endpointCard(n, ep)).join("") : `<p class="muted">no endpoints</p>`;
    const bes = Object.entries(s.backends);
    document.getElementById("backends").innerHTML = bes.length
      ? bes.map(([t, b]) => backendCard(t, b)).join("") : `<p class="muted">no backends</p>`;
    document.getElementById("scaling").innerHTML = scalingTable(s.scaling_events);
    document.body.dataset.snapshotAt = String(s.at);
  }

  function connect() {
    const conn = document.getElementById("conn");
    const source = new EventSource(feedUrl);
    source.addEventListener("open", () => { conn.className = "conn live"; conn.textContent = "live"; });
    source.addEventListener("error", () => { conn.className = "conn lost"; conn.textContent = "reconnecting"; });
    source.addEventListener("snapshot", (event) => {
      conn.className = "conn live";
      conn.textContent = "live";
      render(JSON.parse(event.data));
    });
  }

  connect();
})();
