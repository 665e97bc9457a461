// Switchyard dashboard: polls api/state (the dashboard.State JSON) every
// POLL_MS and renders it. Plain JS, no build step; charts are uPlot
// (static/uplot.iife.min.js, vendored). Every URL is relative: the page is
// served at /dashboard/.
//
// Test hooks (internal/dashboard/page_test.go reads the dumped DOM):
//   body[data-loaded="1"][data-updated=<state.time>] after a render;
//   tr.worker[data-id][data-healthy];
//   table.grid[data-model] > td.cell[data-layer][data-expert][data-tokens]
//     [data-owners][data-live] (class "nolive" when no live copy);
//   div.loss-chart[data-job][data-points][data-last-step][data-last-loss];
//   div#serving[data-tokens-per-s].
(function () {
  "use strict";

  var POLL_MS = 2000;
  var FETCH_TIMEOUT_MS = 10000;

  var $ = function (id) { return document.getElementById(id); };

  // h builds an element: attrs are properties, except "class", "style" (a
  // string), "data" (an object of dataset entries) and names containing
  // "-" (attributes); children are nodes or strings (text, never HTML).
  function h(tag, attrs) {
    var el = document.createElement(tag);
    if (attrs) {
      for (var k in attrs) {
        var v = attrs[k];
        if (v === undefined || v === null) continue;
        if (k === "class") el.className = v;
        else if (k === "style") el.style.cssText = v;
        else if (k === "data") for (var d in v) el.dataset[d] = String(v[d]);
        else if (k.indexOf("-") >= 0) el.setAttribute(k, String(v));
        else el[k] = v;
      }
    }
    for (var i = 2; i < arguments.length; i++) append(el, arguments[i]);
    return el;
  }

  function append(el, c) {
    if (c === undefined || c === null || c === false) return;
    if (Array.isArray(c)) { c.forEach(function (x) { append(el, x); }); return; }
    el.appendChild(typeof c === "object" ? c : document.createTextNode(String(c)));
  }

  function replace(el) {
    while (el.firstChild) el.removeChild(el.firstChild);
    for (var i = 1; i < arguments.length; i++) append(el, arguments[i]);
  }

  function none(text) { return h("p", { class: "none" }, text); }

  // ---- formatting ----

  var intFmt = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 });

  function fmtInt(n) { return intFmt.format(n || 0); }

  function fmtRate(x) {
    x = x || 0;
    if (x === 0) return "0";
    if (Math.abs(x) >= 1e6) return (x / 1e6).toFixed(2) + "M";
    if (Math.abs(x) >= 1e4) return (x / 1e3).toFixed(1) + "k";
    if (Math.abs(x) >= 100) return x.toFixed(0);
    if (Math.abs(x) >= 10) return x.toFixed(1);
    return x.toFixed(2);
  }

  function fmtLoss(x) {
    if (x === undefined || x === null) return "–";
    return Number(x).toFixed(4);
  }

  function fmtMs(x) {
    x = x || 0;
    if (x === 0) return "–";
    if (x >= 100) return x.toFixed(0);
    if (x >= 10) return x.toFixed(1);
    return x.toFixed(2);
  }

  var UNITS = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];

  function fmtBytes(n) {
    n = n || 0;
    var u = 0;
    while (Math.abs(n) >= 1024 && u < UNITS.length - 1) { n /= 1024; u++; }
    return (u === 0 ? n.toFixed(0) : n.toFixed(n >= 100 ? 0 : 1)) + " " + UNITS[u];
  }

  function pad2(n) { return (n < 10 ? "0" : "") + n; }

  function fmtTime(s) {
    var d = new Date(s);
    if (isNaN(d.getTime()) || d.getFullYear() <= 1) return "–";
    return d.getFullYear() + "-" + pad2(d.getMonth() + 1) + "-" + pad2(d.getDate()) + " " +
      pad2(d.getHours()) + ":" + pad2(d.getMinutes()) + ":" + pad2(d.getSeconds());
  }

  function fmtImbalance(x) { return x ? x.toFixed(2) + "×" : "–"; }

  // ---- header ----

  function renderHeader(st) {
    $("cluster").textContent = st.cluster || "–";
    var leader = $("leader");
    leader.textContent = st.leader || "none";
    leader.className = st.leader ? "" : "bad";
    $("time").textContent = fmtTime(st.time);
  }

  function setStatus(text, cls) {
    var s = $("status");
    s.textContent = text;
    s.className = "status " + cls;
  }

  // ---- workers ----

  function renderWorkers(workers) {
    var el = $("workers");
    if (!workers.length) { replace(el, none("No workers registered.")); return; }
    var rows = workers.map(function (w) {
      var budget = w.budget_bytes ? fmtBytes(w.budget_bytes) : "unlimited";
      var over = w.budget_bytes && w.held_bytes > w.budget_bytes;
      return h("tr", { class: "worker", data: { id: w.id, healthy: w.healthy ? "true" : "false" } },
        h("td", { class: "mono" }, w.id),
        h("td", { class: "mono" }, w.addr || "–"),
        h("td", { class: w.healthy ? "ok" : "bad" },
          h("span", { class: "dot" }), w.healthy ? "healthy" : "unhealthy"),
        h("td", { class: "num" }, (w.ttl_seconds || 0) + " s"),
        h("td", { class: "num" }, fmtInt(w.experts)),
        h("td", { class: "num" + (over ? " bad" : "") }, fmtBytes(w.held_bytes) + " / " + budget),
        h("td", { class: "num" }, String(w.epoch || 0)),
        h("td", { class: "num" }, fmtInt(w.tokens)),
        h("td", { class: "num" }, fmtRate(w.tokens_per_s)));
    });
    replace(el, h("table", { class: "table" },
      h("thead", null, h("tr", null,
        h("th", null, "ID"), h("th", null, "address"), h("th", null, "health"),
        h("th", { class: "num" }, "lease TTL"), h("th", { class: "num" }, "experts"),
        h("th", { class: "num" }, "held / budget"), h("th", { class: "num" }, "epoch"),
        h("th", { class: "num" }, "tokens"), h("th", { class: "num" }, "tokens/s"))),
      h("tbody", null, rows)));
  }

  // ---- models: heading and placement grid ----

  // Load colour: white (0) -> orange (0.5) -> red (1).
  var WHITE = [255, 255, 255], ORANGE = [251, 146, 60], RED = [200, 30, 30];

  function heat(t) {
    t = Math.max(0, Math.min(1, t));
    var a, b, u;
    if (t <= 0.5) { a = WHITE; b = ORANGE; u = t / 0.5; } else { a = ORANGE; b = RED; u = (t - 0.5) / 0.5; }
    var c = [0, 1, 2].map(function (i) { return Math.round(a[i] + (b[i] - a[i]) * u); });
    return "rgb(" + c.join(",") + ")";
  }

  // grids[fingerprint] = {section, table, rows, cols, cells[][]}: kept
  // across refreshes so a refresh updates cells in place.
  var grids = {};

  function renderModels(models) {
    var el = $("models");
    var seen = {};
    if (!models.length) {
      grids = {};
      replace(el, none("No models served."));
      return;
    }
    var order = [];
    models.forEach(function (m) {
      seen[m.fingerprint] = true;
      var g = grids[m.fingerprint];
      var grid = m.grid || [];
      var cols = grid.reduce(function (n, r) { return Math.max(n, (r || []).length); }, 0);
      if (!g || g.rows !== grid.length || g.cols !== cols) {
        g = buildModel(m, grid.length, cols);
        grids[m.fingerprint] = g;
      }
      updateModel(g, m);
      order.push(g.section);
    });
    for (var fp in grids) if (!seen[fp]) delete grids[fp];
    // Keep the existing sections (and their scroll positions) when the order is unchanged.
    var same = el.children.length === order.length &&
      order.every(function (s, i) { return el.children[i] === s; });
    if (!same) replace(el, order);
  }

  function buildModel(m, rows, cols) {
    var g = { rows: rows, cols: cols, cells: [], labels: [] };
    g.head = h("div", { class: "model-head" });
    g.table = h("table", { class: "grid", data: { model: m.fingerprint } });
    if (rows && cols) {
      var step = cols <= 32 ? 4 : 8; // expert numbers every step columns
      var hr = h("tr", null, h("th", { class: "corner" }, "layer\\expert"));
      for (var e = 0; e < cols; e++) {
        hr.appendChild(h("th", { class: "ex" }, e % step === 0 ? String(e) : ""));
      }
      var body = h("tbody");
      for (var r = 0; r < rows; r++) {
        var label = h("th", { class: "layer" });
        var tr = h("tr", null, label);
        var row = [];
        for (var c = 0; c < cols; c++) {
          var td = h("td", { class: "cell" });
          tr.appendChild(td);
          row.push(td);
        }
        g.labels.push(label);
        g.cells.push(row);
        body.appendChild(tr);
      }
      g.table.appendChild(h("thead", null, hr));
      g.table.appendChild(body);
    }
    g.legend = h("div", { class: "legend" });
    g.section = h("div", { class: "model" }, g.head,
      rows && cols ? [h("div", { class: "grid-wrap" }, g.table), g.legend]
        : none("No placement yet."));
    return g;
  }

  function updateModel(g, m) {
    var grid = m.grid || [];
    var layers = m.grid_layers || [];
    var unplaced = m.unplaced || [];

    var verdict = m.ok ? h("span", { class: "ok" }, "OK")
      : h("span", { class: "bad" }, m.verdict || "not OK");
    var unpl = null;
    if (unplaced.length) {
      var shown = unplaced.slice(0, 24).join(", ") + (unplaced.length > 24 ? ", …" : "");
      unpl = h("p", { class: "bad unplaced" },
        unplaced.length + " expert" + (unplaced.length === 1 ? "" : "s") + " without a live copy: " + shown);
    }
    replace(g.head,
      h("h3", null, m.name || m.fingerprint, " ", h("span", { class: "family" }, m.family || "")),
      h("dl", { class: "facts" },
        fact("fingerprint", h("span", { class: "mono" }, m.fingerprint)),
        fact("layers", m.layers), fact("experts", m.experts),
        fact("epoch", m.epoch || "not placed"), fact("replicas", m.replicas),
        fact("verdict", verdict),
        fact("imbalance by expert", fmtImbalance(m.imbalance_by_expert)),
        fact("by worker", fmtImbalance(m.imbalance_by_worker))),
      unpl);
    if (!g.rows || !g.cols) return;

    // Colour by rate when any cell has one, else by the counts so far.
    var byRate = grid.some(function (r) { return (r || []).some(function (c) { return c && c.tokens_per_s > 0; }); });
    var max = 0;
    grid.forEach(function (r) {
      (r || []).forEach(function (c) { if (c && c.live > 0) max = Math.max(max, byRate ? c.tokens_per_s : c.tokens); });
    });
    var showCount = m.replicas > 1;

    for (var r = 0; r < g.rows; r++) {
      var layer = layers[r] !== undefined ? layers[r] : r;
      g.labels[r].textContent = "L" + layer;
      var row = grid[r] || [];
      for (var e = 0; e < g.cols; e++) {
        var c = row[e] || { owners: [], live: 0, tokens: 0, tokens_per_s: 0 };
        var td = g.cells[r][e];
        var owners = c.owners || [];
        var live = c.live || 0;
        var v = byRate ? c.tokens_per_s : c.tokens;
        var ds = td.dataset;
        ds.layer = layer;
        ds.expert = e;
        ds.tokens = c.tokens || 0;
        ds.owners = owners.join(",");
        ds.live = live;
        var dead = live === 0;
        var cls = dead ? "cell nolive" : "cell";
        var bg = "";
        if (!dead) {
          var t = max > 0 ? v / max : 0;
          bg = heat(t);
          if (t > 0.7) cls += " hot";
        }
        if (td.className !== cls) td.className = cls;
        if (td.style.backgroundColor !== bg) td.style.backgroundColor = bg;
        var text = dead ? "×" : (showCount ? String(live) : "");
        if (td.textContent !== text) td.textContent = text;
        td.title = "layer " + layer + ", expert " + e + "\n" +
          (owners.length ? "owners: " + owners.join(", ") : "owners: none") +
          "\nlive copies: " + live + (dead ? " (no live copy)" : "") +
          "\ntokens: " + fmtInt(c.tokens) + "\ntokens/s: " + fmtRate(c.tokens_per_s);
      }
    }
    replace(g.legend,
      h("span", null, "load (" + (byRate ? "tokens/s" : "tokens") + "): 0"),
      h("span", { class: "ramp" }),
      h("span", null, byRate ? fmtRate(max) : fmtInt(max)),
      h("span", { class: "swatch nolive" }, "×"), h("span", null, "no live copy"),
      showCount ? h("span", { class: "note" }, "cell text: live copies") : null);
  }

  function fact(name, value) {
    return h("div", null, h("dt", null, name), h("dd", null, value));
  }

  // ---- charts ----

  function chartWidth(el) {
    var w = el.clientWidth || (el.parentNode && el.parentNode.clientWidth) || 600;
    return Math.max(240, Math.floor(w) - 4);
  }

  var charts = []; // {el, plot} of every live uPlot, for resizing

  function makePlot(el, opts, data) {
    opts.width = chartWidth(el);
    var plot = new uPlot(opts, data, el);
    charts.push({ el: el, plot: plot });
    return plot;
  }

  function destroyPlot(plot) {
    if (!plot) return;
    charts = charts.filter(function (c) { return c.plot !== plot; });
    plot.destroy();
  }

  var resizeTimer = null;
  window.addEventListener("resize", function () {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(function () {
      charts.forEach(function (c) {
        c.plot.setSize({ width: chartWidth(c.el), height: c.plot.height });
      });
    }, 150);
  });

  // ---- training jobs ----

  // jobCharts[id] = {card, title, box, plot}.
  var jobCharts = {};

  function renderJobs(jobs) {
    var table = $("jobs-table");
    var box = $("job-charts");
    if (!jobs.length) {
      replace(table, none("No training jobs."));
      for (var id in jobCharts) destroyPlot(jobCharts[id].plot);
      jobCharts = {};
      replace(box);
      return;
    }
    replace(table, h("table", { class: "table" },
      h("thead", null, h("tr", null,
        h("th", null, "ID"), h("th", null, "state"), h("th", { class: "num" }, "attempt"),
        h("th", { class: "num" }, "step"), h("th", { class: "num" }, "loss"),
        h("th", { class: "num" }, "eval loss"), h("th", { class: "num" }, "tokens/s"),
        h("th", null, "error"))),
      h("tbody", null, jobs.map(function (j) {
        return h("tr", { class: "job", data: { id: j.id, state: j.state } },
          h("td", { class: "mono" }, j.id),
          h("td", { class: "state-" + j.state }, j.state),
          h("td", { class: "num" }, String(j.attempt || 0)),
          h("td", { class: "num" }, fmtInt(j.step) + " / " + fmtInt(j.steps)),
          h("td", { class: "num" }, fmtLoss(j.loss)),
          h("td", { class: "num" }, j.eval_loss ? fmtLoss(j.eval_loss) : "–"),
          h("td", { class: "num" }, fmtRate(j.tokens_per_s)),
          h("td", { class: "bad err" }, j.error || ""));
      }))));

    var seen = {};
    var order = jobs.map(function (j) {
      seen[j.id] = true;
      var jc = jobCharts[j.id];
      if (!jc) {
        jc = { title: h("h3"), box: h("div", { class: "loss-chart", data: { job: j.id } }), plot: null };
        jc.card = h("div", { class: "card" }, jc.title, jc.box);
        jobCharts[j.id] = jc;
      }
      return jc;
    });
    for (var gone in jobCharts) {
      if (!seen[gone]) { destroyPlot(jobCharts[gone].plot); delete jobCharts[gone]; }
    }
    // Place the cards first (a new chart takes its card's width), moving
    // existing ones only when the order changed (moving keeps the canvases).
    var same = box.children.length === order.length &&
      order.every(function (jc, i) { return box.children[i] === jc.card; });
    if (!same) {
      order.forEach(function (jc) { box.appendChild(jc.card); });
      while (box.children.length > order.length) box.removeChild(box.firstChild);
    }
    jobs.forEach(function (j, i) { updateJobChart(order[i], j); });
  }

  function updateJobChart(jc, j) {
    var curve = j.curve || [];
    replace(jc.title, "job ", h("span", { class: "mono" }, j.id),
      h("span", { class: "sub" }, " " + j.state + ", " + curve.length + " points"));
    var ds = jc.box.dataset;
    ds.points = curve.length;
    ds.lastStep = curve.length ? curve[curve.length - 1].step : "";
    ds.lastLoss = curve.length ? String(curve[curve.length - 1].loss) : "";
    if (!curve.length) {
      destroyPlot(jc.plot);
      jc.plot = null;
      replace(jc.box, none("No loss reported yet."));
      return;
    }
    var data = [curve.map(function (p) { return p.step; }), curve.map(function (p) { return p.loss; })];
    if (jc.plot) { jc.plot.setData(data); return; }
    replace(jc.box);
    jc.plot = makePlot(jc.box, {
      height: 200,
      scales: { x: { time: false } },
      series: [
        { label: "step" },
        { label: "loss", stroke: "#c2410c", width: 1.5, value: function (u, v) { return v == null ? "–" : v.toFixed(4); } },
      ],
      axes: [{ label: "step" }, { size: 56 }],
      cursor: { drag: { x: false, y: false } },
    }, data);
  }

  // ---- serving ----

  var servingPlot = null;

  function stat(name, value, unit) {
    return h("div", { class: "stat" }, h("div", { class: "v" }, value, unit ? h("small", null, " " + unit) : null),
      h("div", { class: "k" }, name));
  }

  function quant(q) {
    q = q || {};
    return fmtMs(q.p50) + " / " + fmtMs(q.p90) + " / " + fmtMs(q.p99);
  }

  function renderServing(sv, fronts) {
    sv = sv || {};
    var box = $("serving");
    box.dataset.tokensPerS = String(sv.tokens_per_s || 0);
    replace($("serving-stats"),
      stat("generated tokens/s", fmtRate(sv.tokens_per_s)),
      stat("prompt tokens/s", fmtRate(sv.prompt_tokens_per_s)),
      stat("requests", fmtInt(sv.requests)),
      stat("active", fmtInt(sv.active)),
      stat("queued", fmtInt(sv.queued)),
      stat("TTFT p50 / p90 / p99", quant(sv.ttft_ms), "ms"),
      stat("ITL p50 / p90 / p99", quant(sv.itl_ms), "ms"));

    var hist = sv.history || [];
    var chart = $("serving-chart");
    if (!hist.length) {
      destroyPlot(servingPlot);
      servingPlot = null;
      replace(chart, none("No serving history."));
    } else {
      var data = [
        hist.map(function (p) { return new Date(p.time).getTime() / 1000; }),
        hist.map(function (p) { return p.value; }),
      ];
      chart.dataset.points = hist.length;
      if (servingPlot) servingPlot.setData(data);
      else {
        replace(chart);
        servingPlot = makePlot(chart, {
          height: 180,
          series: [
            {},
            { label: "generated tokens/s", stroke: "#1d4ed8", fill: "rgba(29,78,216,0.08)", width: 1.5,
              value: function (u, v) { return v == null ? "–" : fmtRate(v); } },
          ],
          axes: [{}, { size: 56 }],
          cursor: { drag: { x: false, y: false } },
        }, data);
      }
    }

    var fe = $("frontends");
    if (!fronts.length) { replace(fe, none("No front ends.")); return; }
    replace(fe, h("table", { class: "table" },
      h("thead", null, h("tr", null,
        h("th", null, "front end"), h("th", { class: "num" }, "tokens/s"),
        h("th", { class: "num" }, "prompt tokens/s"), h("th", { class: "num" }, "requests"),
        h("th", { class: "num" }, "active"), h("th", { class: "num" }, "queued"),
        h("th", { class: "num" }, "TTFT p50/p90/p99 ms"), h("th", { class: "num" }, "ITL p50/p90/p99 ms"))),
      h("tbody", null, fronts.map(function (f) {
        return h("tr", { class: "frontend", data: { name: f.name || "" } },
          h("td", { class: "mono" }, f.name || "–"),
          h("td", { class: "num" }, fmtRate(f.tokens_per_s)),
          h("td", { class: "num" }, fmtRate(f.prompt_tokens_per_s)),
          h("td", { class: "num" }, fmtInt(f.requests)),
          h("td", { class: "num" }, fmtInt(f.active)),
          h("td", { class: "num" }, fmtInt(f.queued)),
          h("td", { class: "num" }, quant(f.ttft_ms)),
          h("td", { class: "num" }, quant(f.itl_ms)));
      }))));
  }

  // ---- polling ----

  var lastTime = null;

  function render(st) {
    renderHeader(st);
    renderWorkers(st.workers || []);
    renderModels(st.models || []);
    renderJobs(st.jobs || []);
    renderServing(st.serving, st.frontends || []);
    document.body.dataset.loaded = "1";
    document.body.dataset.updated = st.time || "";
    lastTime = st.time;
  }

  function fail(msg) {
    setStatus("error: " + msg + (lastTime ? " (showing the snapshot of " + fmtTime(lastTime) + ")" : ""), "bad");
  }

  function poll() {
    var ctl = typeof AbortController === "function" ? new AbortController() : null;
    var timer = ctl ? setTimeout(function () { ctl.abort(); }, FETCH_TIMEOUT_MS) : null;
    fetch("api/state", { cache: "no-store", headers: { Accept: "application/json" }, signal: ctl ? ctl.signal : undefined })
      .then(function (resp) {
        return resp.text().then(function (body) {
          var js = null;
          try { js = JSON.parse(body); } catch (e) { /* reported below */ }
          if (!resp.ok) throw new Error((js && js.error) || (resp.status + " " + resp.statusText));
          if (!js) throw new Error("bad JSON from api/state");
          return js;
        });
      })
      .then(function (st) {
        render(st);
        setStatus("live", "ok");
      })
      .catch(function (err) {
        fail(err && err.name === "AbortError" ? "timed out" : (err && err.message) || String(err));
        if (window.console) console.error(err);
      })
      .then(function () {
        if (timer) clearTimeout(timer);
        setTimeout(poll, POLL_MS);
      });
  }

  poll();
})();
