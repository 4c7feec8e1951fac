// unsflow dashboard: one script for the four pages. It talks to its own origin only:
// server-sent events (/api/events) and JSON (/api/lake). Charts: the vendored uPlot.
"use strict";
(function () {
  const PAGES = { "/": "line", "/uns": "uns", "/pipeline": "pipeline", "/lake": "lake" };
  const page = PAGES[location.pathname] || "line";
  const main = document.getElementById("main");
  const statusEl = document.getElementById("status");
  document.body.dataset.page = page;
  for (const a of document.querySelectorAll("nav a")) {
    a.classList.toggle("active", a.dataset.page === page);
  }

  // --- helpers -------------------------------------------------------------
  function h(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") e.className = v;
      else if (k === "text") e.textContent = v;
      else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else if (k.startsWith("data-")) e.setAttribute(k, v);
      else e[k] = v;
    }
    for (const c of children) {
      if (c === null || c === undefined) continue;
      e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return e;
  }
  function num(v, digits) {
    if (v === null || v === undefined || Number.isNaN(v)) return "–";
    if (digits === undefined) digits = Math.abs(v) >= 100 ? 0 : Math.abs(v) >= 10 ? 1 : 2;
    return Number(v).toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: 0 });
  }
  function clock(sec) {
    if (!sec) return "–";
    return new Date(sec * 1000).toLocaleTimeString("en-GB", { hour12: false });
  }
  function ago(sec) {
    if (!sec) return "never";
    const d = Math.max(0, Date.now() / 1000 - sec);
    if (d < 2) return "now";
    if (d < 90) return Math.round(d) + " s ago";
    if (d < 5400) return Math.round(d / 60) + " min ago";
    return clock(sec);
  }
  function bytes(n) {
    if (n === null || n === undefined) return "–";
    const units = ["B", "KB", "MB", "GB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return num(n, i ? 1 : 0) + " " + units[i];
  }
  function setStatus(s) {
    if (!s) return;
    const ok = !!s.connected;
    const sampled = ok && s.sampling !== undefined && s.sampling < 1
      ? " · sampled: " + Math.round(s.sampling * 100) + "% of ~" + num(s.uns_rate, 0) + " msg/s" : "";
    statusEl.className = "status " + (ok ? "ok" : "bad") + (sampled ? " sampled" : "");
    statusEl.textContent = (s.broker ? "MQTT " + s.broker : "no broker") +
      (ok ? " · " + num(s.messages, 0) + " messages · " + num(s.topics, 0) + " topics"
          : " · " + (s.error || "not connected")) + sampled;
  }
  function connect(params, handlers) {
    const es = new EventSource("/api/events?" + new URLSearchParams(params));
    for (const [name, fn] of Object.entries(handlers)) {
      es.addEventListener(name, (ev) => {
        const data = JSON.parse(ev.data);
        if (data.status) setStatus(data.status);
        fn(data);
      });
    }
    es.addEventListener("error", () => {
      statusEl.className = "status bad";
      statusEl.textContent = "dashboard connection lost; reconnecting…";
    });
    return es;
  }

  // --- Line ------------------------------------------------------------------
  function linePage() {
    const chartsEl = h("div", { class: "charts", id: "charts" },
      h("div", { class: "empty", id: "no-charts", text: "Waiting for sensor readings…" }));
    const alertList = h("ol", { id: "alerts" });
    const alertCount = h("span", { class: "muted", id: "alert-count" });
    main.append(h("div", { class: "line-page" }, chartsEl,
      h("aside", { class: "alerts card" }, h("h2", {}, "Alerts ", alertCount), alertList,
        h("div", { class: "empty", id: "no-alerts", text: "No alert yet." }))));
    const charts = new Map();  // sid -> {meta, xs, ys, plot, el}
    const maxPoints = 300;
    // Only charts on screen are drawn, once per animation frame at most; the others keep
    // their data and are drawn when they scroll into view.
    const visible = new Set();
    const dirty = new Set();
    let frame = 0;
    const seen = new IntersectionObserver((entries) => {
      for (const e of entries) {
        const sid = e.target.dataset.sid;
        if (e.isIntersecting) { visible.add(sid); dirty.add(sid); } else visible.delete(sid);
      }
      schedule();
    }, { rootMargin: "200px" });
    function schedule() {
      if (!frame) frame = requestAnimationFrame(drawDirty);
    }
    function drawDirty() {
      frame = 0;
      for (const sid of dirty) {
        if (!visible.has(sid)) continue;
        const c = charts.get(sid);
        if (c) redraw(c);
        dirty.delete(sid);
      }
    }

    function groupEl(group) {
      const id = "g:" + group;
      let g = document.getElementById(id);
      if (!g) {
        const title = h("h2", {});
        (group || "(no hierarchy)").split("/").forEach((part, i) => {
          if (i) title.append(h("span", { class: "sep", text: "/" }));
          title.append(part);
        });
        g = h("section", { class: "group", id, "data-group": group }, title,
          h("div", { class: "machines" }));
        insertSorted(chartsEl, g, "data-group", group);
      }
      return g.querySelector(".machines");
    }
    function machineEl(meta) {
      const parent = groupEl(meta.group);
      const key = meta.group + "|" + meta.machine;
      for (const m of parent.children) if (m.dataset.key === key) return m;
      const m = h("div", { class: "machine", "data-key": key, "data-machine": meta.machine },
        h("h3", {}, meta.machine, meta.device && meta.device !== meta.machine
          ? h("span", { class: "muted", text: "  " + meta.device }) : null));
      insertSorted(parent, m, "data-key", key);
      return m;
    }
    function insertSorted(parent, child, attr, key) {
      for (const c of parent.children) {
        const k = c.getAttribute(attr);
        if (k !== null && k > key) { parent.insertBefore(child, c); return; }
      }
      parent.append(child);
    }
    function limitText(meta) {
      const parts = [];
      if (meta.below !== null && meta.below !== undefined) parts.push("≥ " + num(meta.below));
      if (meta.above !== null && meta.above !== undefined) parts.push("≤ " + num(meta.above));
      return parts.length ? "limit " + parts.join(" and ") + (meta.unit ? " " + meta.unit : "") : "";
    }
    function addChart(meta) {
      if (charts.has(meta.sid)) return charts.get(meta.sid);
      const none = document.getElementById("no-charts");
      if (none) none.remove();
      const value = h("span", { class: "value", text: "–" });
      const plotEl = h("div", { class: "plot" });
      const el = h("div", { class: "chart", "data-sid": meta.sid, "data-sensor": meta.sensor,
                            "data-machine": meta.machine, "data-points": "0" },
        h("div", { class: "chart-head" }, h("span", { class: "sensor", text: meta.sensor }),
          h("span", { class: "limit", text: limitText(meta) }), value,
          h("span", { class: "unit", text: meta.unit || "" })), plotEl);
      const machine = machineEl(meta);
      insertSorted(machine, el, "data-sensor", meta.sensor);
      const c = { meta, xs: [], ys: [], el, value, plotEl, plot: null };
      charts.set(meta.sid, c);
      seen.observe(el);
      return c;
    }
    function makePlot(c) {
      const width = Math.max(200, c.plotEl.clientWidth || 380);
      const series = [{}, { label: c.meta.sensor, stroke: "#2563eb", width: 1.5,
                            points: { show: false } }];
      for (const key of ["above", "below"]) {
        if (c.meta[key] !== null && c.meta[key] !== undefined) {
          series.push({ label: "limit", stroke: "#dc2626", width: 1, dash: [6, 4],
                        points: { show: false } });
        }
      }
      c.plot = new uPlot({ width, height: 130, legend: { show: false }, cursor: { show: false },
        scales: { x: { time: true } }, series,
        axes: [{ stroke: "#6b7280", grid: { stroke: "#f1f5f9" }, ticks: { stroke: "#e5e7eb" } },
               { stroke: "#6b7280", size: 48, grid: { stroke: "#f1f5f9" },
                 ticks: { stroke: "#e5e7eb" } }] }, data(c), c.plotEl);
    }
    function data(c) {
      const out = [c.xs, c.ys];
      for (const key of ["above", "below"]) {
        const v = c.meta[key];
        if (v !== null && v !== undefined) out.push(c.xs.map(() => v));
      }
      return out;
    }
    function addPoints(c, points) {
      for (const [t, v] of points) {
        const n = c.xs.length;
        if (n && t < c.xs[n - 1]) continue;  // an older reading: charts move forward only
        c.xs.push(t); c.ys.push(v);
      }
      const extra = c.xs.length - maxPoints;
      if (extra > 0) { c.xs.splice(0, extra); c.ys.splice(0, extra); }
      if (c.ys.length) c.value.textContent = num(c.ys[c.ys.length - 1]);
      c.el.dataset.points = String(c.xs.length);
    }
    function redraw(c) {
      if (!c.xs.length) return;
      if (!c.plot) makePlot(c); else c.plot.setData(data(c));
    }
    function addAlerts(alerts, fresh) {  // alerts oldest first; the newest ends on top
      for (const a of alerts) {
        const none = document.getElementById("no-alerts");
        if (none) none.remove();
        const what = a.kind === "threshold" ? a.text : "anomaly";
        const model = a.kind === "anomaly" && (a.model || a.version)
          ? "model " + (a.model || "") + (a.version ? " v" + a.version : "") : "";
        const li = h("li", { class: "alert " + a.kind + (fresh ? " fresh" : ""),
                             "data-kind": a.kind, "data-machine": a.machine,
                             "data-sensor": a.sensor, "data-version": a.version },
          h("div", { class: "what" }, a.machine + " · " + a.sensor + " = " + num(a.value)),
          h("div", {}, what),
          h("div", { class: "when", text: clock(a.ts) + (model ? " · " + model : "") }));
        alertList.prepend(li);
        if (fresh) {
          for (const c of charts.values()) {
            if (c.meta.machine === a.machine && c.meta.sensor === a.sensor) {
              c.el.classList.add("alarm");
              setTimeout(() => c.el.classList.remove("alarm"), 8000);
            }
          }
        }
      }
      while (alertList.children.length > 200) alertList.lastChild.remove();
    }
    connect({ page: "line" }, {
      snapshot(d) {
        for (const s of d.series) {
          const c = addChart(s);
          c.xs = []; c.ys = [];
          addPoints(c, s.points);
          dirty.add(c.meta.sid);
        }
        schedule();
        alertList.replaceChildren();
        addAlerts(d.alerts.slice().reverse(), false);
        alertCount.textContent = d.alerts_total ? "(" + d.alerts_total + ")" : "";
      },
      update(d) {
        for (const meta of d.new_series) addChart(meta);
        for (const [sid, points] of Object.entries(d.points)) {
          const c = charts.get(sid);
          if (c) { addPoints(c, points); dirty.add(sid); }
        }
        schedule();
        if (d.alerts.length) addAlerts(d.alerts, true);
        alertCount.textContent = d.alerts_total ? "(" + d.alerts_total + ")" : "";
      },
    });
    let resizeTimer = null;
    window.addEventListener("resize", () => {
      clearTimeout(resizeTimer);
      resizeTimer = setTimeout(() => {
        for (const c of charts.values()) {
          if (c.plot) c.plot.setSize({ width: Math.max(200, c.plotEl.clientWidth), height: 130 });
        }
      }, 150);
    });
  }

  // --- UNS explorer ------------------------------------------------------------
  function unsPage() {
    const filter = h("input", { type: "search", id: "filter", placeholder: "filter topics (text)",
                                value: new URLSearchParams(location.search).get("filter") || "" });
    const count = h("span", { class: "muted", id: "topic-count" });
    const tree = h("div", { class: "tree", id: "tree" });
    const detail = h("div", { class: "detail card", id: "detail" },
      h("div", { class: "muted", text: "Select a topic to see its last payload." }));
    main.append(h("div", { class: "toolbar" }, filter, count),
      h("div", { class: "uns-page" }, tree, detail));
    const nodes = new Map();  // path -> node element
    const rows = new Map();  // topic -> row data
    let selected = null;
    let es = null;

    function node(path) {
      if (nodes.has(path)) return nodes.get(path);
      const cut = path.lastIndexOf("/");
      const parent = cut >= 0 ? node(path.slice(0, cut)).querySelector(":scope > .kids") : tree;
      const name = cut >= 0 ? path.slice(cut + 1) : path;
      const row = h("div", { class: "row" }, h("span", { class: "toggle", text: "" }),
        h("span", { class: "name", text: name || "(empty)" }), h("span", { class: "stats" }),
        h("span", { class: "payload mono" }));
      const n = h("div", { class: "node", "data-path": path }, row, h("div", { class: "kids" }));
      row.addEventListener("click", () => {
        if (rows.has(path)) select(path);
        if (n.querySelector(":scope > .kids").children.length) {
          n.classList.toggle("closed");
          row.querySelector(".toggle").textContent = n.classList.contains("closed") ? "▸" : "▾";
        }
      });
      let before = null;
      for (const c of parent.children) {
        if (c.dataset.path > path) { before = c; break; }
      }
      parent.insertBefore(n, before);
      if (cut >= 0) {
        const p = nodes.get(path.slice(0, cut));
        p.querySelector(":scope > .row .toggle").textContent = p.classList.contains("closed") ? "▸" : "▾";
      }
      nodes.set(path, n);
      return n;
    }
    function show(r) {
      const n = node(r.topic);
      n.dataset.topic = r.topic;
      n.classList.toggle("alerting", !!r.alert);
      const row = n.querySelector(":scope > .row");
      row.querySelector(".stats").replaceChildren(
        num(r.count, 0) + " msgs · " + num(r.rate) + "/s",
        r.retained ? h("span", { class: "badge retained", text: "retained" }) : "");
      row.querySelector(".payload").textContent = r.payload.slice(0, 160);
      if (selected === r.topic) select(r.topic);
    }
    function select(topic) {
      selected = topic;
      for (const s of tree.querySelectorAll(".row.selected")) s.classList.remove("selected");
      const n = nodes.get(topic);
      if (n) n.querySelector(":scope > .row").classList.add("selected");
      const r = rows.get(topic);
      if (!r) return;
      let pretty = r.payload;
      try { pretty = JSON.stringify(JSON.parse(r.payload), null, 2); } catch (e) { /* not JSON */ }
      detail.replaceChildren(h("h2", { class: "mono", text: r.topic }),
        h("div", { class: "muted" }, num(r.count, 0) + " messages · " + num(r.rate) + " msg/s · " +
          bytes(r.size) + " · last " + ago(r.last) + " ",
          r.retained ? h("span", { class: "badge retained", text: "retained" }) : ""),
        h("pre", { text: pretty }));
    }
    function apply(d) {
      if (d.full) { rows.clear(); nodes.clear(); tree.replaceChildren(); }
      for (const r of d.rows) { rows.set(r.topic, r); show(r); }
      count.textContent = rows.size + " topic(s)";
      const none = tree.querySelector(":scope > .empty");
      if (rows.size && none) none.remove();
      if (!rows.size && !none) tree.replaceChildren(h("div", { class: "empty", text: "No topic yet." }));
    }
    function start() {
      if (es) es.close();
      es = connect({ page: "uns", filter: filter.value }, { snapshot: apply, topics: apply });
    }
    let timer = null;
    filter.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(start, 300); });
    start();
  }

  // --- Pipeline ----------------------------------------------------------------
  function pipelinePage() {
    const root = h("div", { id: "pipelines" });
    main.append(root);
    const open = new Set();  // config <details> left open by the user
    function table(head, body) {
      return h("table", {}, h("thead", {}, h("tr", {}, ...head.map(([t, cls]) =>
        h("th", { class: cls || "", text: t })))), h("tbody", {}, ...body));
    }
    function render(p) {
      const reachable = p.reachable;
      const badge = reachable === false ? h("span", { class: "badge unreachable", text: "unreachable" })
        : p.ready ? h("span", { class: "badge ok", text: "ready" })
        : reachable ? h("span", { class: "badge down", text: "not ready" })
        : h("span", { class: "badge unknown", text: "…" });
      const head = h("div", { class: "pipeline-head" }, h("h1", { text: p.name }), badge,
        p.generation ? h("span", { class: "muted", text: "generation " + p.generation }) : null,
        p.running_sha ? h("span", { class: "muted mono", text: "sha256 " + p.running_sha.slice(0, 12) }) : null,
        h("span", { class: "muted mono", text: p.metrics_url || "no metrics endpoint" }));
      const parts = [head];
      if (p.error) parts.push(h("p", {}, h("span", { class: "badge down", text: "metrics: " + p.error })));
      if (p.ready_reason) parts.push(h("div", { class: "muted", text: p.ready_reason }));
      const targets = table([["target"], ["type"], ["status"], ["msg/s in", "num"],
        ["accepted/s", "num"], ["accepted", "num"], ["in flight", "num"], ["spooled", "num"],
        ["dead-lettered", "num"],
        ["retries", "num"], ["last write"]], (p.targets || []).map((t) =>
        h("tr", { class: "target " + t.status, "data-target": t.name, "data-status": t.status },
          h("td", {}, h("b", { text: t.name }), t.processors.length
            ? h("div", { class: "muted", text: "← " + t.processors.join(" → ") }) : null),
          h("td", { text: t.type }),
          h("td", {}, h("span", { class: "badge " + t.status, text: t.status }),
            t.why ? h("div", { text: t.why }) : null),
          h("td", { class: "num", text: num(t.rate) }), h("td", { class: "num", text: num(t.accepted_rate) }),
          h("td", { class: "num", text: num(t.accepted, 0) }),
          h("td", { class: "num", text: num(t.in_flight, 0) }),
          h("td", { class: "num", text: t.spool_batches === null || t.spool_batches === undefined
            ? "–" : num(t.spool_batches, 0) + " (" + bytes(t.spool_bytes) + ")" }),
          h("td", { class: "num", text: num(t.dead_lettered, 0) }),
          h("td", { class: "num", text: num(t.retries, 0) }), h("td", { text: ago(t.last_write) }))));
      const sources = table([["source"], ["ready"], ["received/s", "num"], ["acked/s", "num"],
        ["in flight", "num"], ["received", "num"]], (p.sources || []).map((s) =>
        h("tr", {}, h("td", { text: s.id }),
          h("td", {}, h("span", { class: "badge " + (s.ready ? "ok" : "down"), text: s.ready ? "yes" : "no" })),
          h("td", { class: "num", text: num(s.rate) }), h("td", { class: "num", text: num(s.acked_rate) }),
          h("td", { class: "num", text: num(s.in_flight, 0) }), h("td", { class: "num", text: num(s.received, 0) }))));
      const subs = table([["subscription"], ["qos", "num"], ["targets"], ["msg/s (seen here)", "num"],
        ["last message"]], (p.subscriptions || []).map((s) =>
        h("tr", {}, h("td", { class: "mono", text: s.filter }), h("td", { class: "num", text: s.qos ?? "–" }),
          h("td", { text: (s.targets || []).join(", ") }), h("td", { class: "num", text: num(s.rate) }),
          h("td", { text: ago(s.last_message) }))));
      const history = h("ol", { class: "history" }, ...(p.history || []).map((e) =>
        h("li", {}, h("span", { class: "badge " + e.result, text: e.result }), " ", clock(e.time),
          e.generation ? " · generation " + e.generation : "",
          e.sha ? h("span", { class: "muted mono", text: " · " + e.sha.slice(0, 12) }) : "",
          e.issues && e.issues.length ? h("ul", { class: "issues" }, ...e.issues.map((i) =>
            h("li", { class: "mono", text: i }))) : null)));
      const details = h("details", { class: "config-details" },
        h("summary", {}, (p.config_is_running ? "Running config" : "Config file") +
          (p.file_sha && p.running_sha && p.file_sha !== p.running_sha
            ? " (the file on disk differs: not applied)" : "")),
        h("pre", { class: "config mono", text: p.config || "(no config file)" }));
      if (open.has(p.name)) details.open = true;
      details.addEventListener("toggle", () => {
        if (details.open) open.add(p.name); else open.delete(p.name);
      });
      parts.push(h("div", { class: "pipeline-grid" },
        h("div", { class: "wide" }, h("h3", { text: "Targets" }), targets),
        h("div", {}, h("h3", { text: "Sources" }), sources,
          h("p", { class: "muted" }, "dead-lettered: ", h("b", { text: num(p.dead_letter_total, 0) }),
            " · unrouted: ", h("b", { text: num(p.unrouted, 0) }))),
        h("div", {}, h("h3", { text: "Subscriptions" }), subs),
        h("div", {}, h("h3", { text: "Config" }), details),
        h("div", {}, h("h3", { text: "Reloads" }), (p.history || []).length ? history
          : h("div", { class: "muted", text: "none yet" }))));
      return h("section", { class: "pipeline card" + (reachable === false ? " unreachable" : ""),
                            "data-name": p.name }, ...parts);
    }
    function apply(d) {
      const list = d.pipelines || [];
      if (!list.length) {
        root.replaceChildren(h("div", { class: "empty", text:
          "No pipeline to show: start the dashboard with --config PIPELINE.json (or --metrics-url)." }));
        return;
      }
      root.replaceChildren(...list.map(render));
    }
    connect({ page: "pipeline" }, { snapshot: apply, pipelines: apply });
  }

  // --- Data lake -----------------------------------------------------------------
  function lakePage() {
    const root = h("div", { class: "lake-page", id: "lakes" });
    main.append(root);
    const chosen = new Map();  // lake index -> partition
    const previews = new Map();  // lake index -> preview element
    async function getJSON(url) {
      const r = await fetch(url, { headers: { Accept: "application/json" } });
      const d = await r.json();
      if (!r.ok) throw new Error(d.error || ("HTTP " + r.status));
      return d;
    }
    function queryBox(q) {
      const code = h("code", { class: "duckdb", text: q });
      const copy = h("button", { type: "button", text: "copy", onclick: () => {
        if (navigator.clipboard) navigator.clipboard.writeText(q).catch(() => {});
      } });
      return h("div", { class: "query" }, h("span", { text: "DuckDB" }), code, copy);
    }
    async function preview(i, path) {
      const box = previews.get(i);
      box.replaceChildren(h("div", { class: "muted", text: "reading " + (path || "the lake") + "…" }));
      try {
        const d = await getJSON("/api/lake/preview?" + new URLSearchParams({ lake: i, path, limit: 50 }));
        const tbl = h("table", { class: "preview" },
          h("thead", {}, h("tr", {}, ...d.columns.map((c) => h("th", { text: c })))),
          h("tbody", {}, ...d.rows.map((r) => h("tr", {}, ...d.columns.map((c) => {
            const v = r[c];
            return h("td", { text: v === null || v === undefined ? "" : typeof v === "object" ? JSON.stringify(v) : String(v) });
          })))));
        box.replaceChildren(h("h2", { class: "mono", text: (d.kind === "object" ? "" : "partition ") + (path || "/") }),
          h("div", { class: "muted", text: "first " + d.rows.length + " of " + num(d.total_rows, 0) + " rows" }),
          queryBox(d.query), h("div", { class: "preview-wrap" }, tbl));
      } catch (e) {
        box.replaceChildren(h("div", { class: "badge down", text: String(e.message || e) }));
      }
    }
    function render(lake, i) {
      if (!previews.has(i)) previews.set(i, h("div", { class: "preview-box" },
        h("div", { class: "muted", text: "Choose a partition or an object to preview its rows." })));
      const parts = lake.partitions;
      const current = chosen.has(i) ? chosen.get(i) : (parts[0] ? parts[0].partition : null);
      const list = h("ul", {}, ...parts.map((p) => h("li", {
        class: p.partition === current ? "selected" : "", "data-partition": p.partition,
        onclick: () => { chosen.set(i, p.partition); load(); } },
        h("span", { class: "mono", text: p.partition || "/" }),
        h("span", { class: "count", text: p.objects + " obj · " + num(p.rows, 0) + " rows" }))));
      const part = parts.find((p) => p.partition === current);
      const objects = part ? h("table", { class: "objects" },
        h("thead", {}, h("tr", {}, h("th", { text: "object" }), h("th", { class: "num", text: "rows" }),
          h("th", { class: "num", text: "size" }), h("th", { text: "written" }), h("th", {}))),
        h("tbody", {}, ...part.items.slice(0, 200).map((o) => h("tr", { "data-path": o.path },
          h("td", { class: "mono", text: o.path.split("/").pop() }), h("td", { class: "num", text: num(o.rows, 0) }),
          h("td", { class: "num", text: bytes(o.bytes) }), h("td", { text: ago(o.modified) }),
          h("td", {}, h("button", { type: "button", class: "preview-object", text: "preview",
                                    onclick: () => preview(i, o.path) })))))) : null;
      return h("section", { class: "lake card", "data-root": lake.root },
        h("div", { class: "pipeline-head" }, h("h1", { text: "Lake" }), h("span", { class: "mono", text: lake.root }),
          h("span", { class: "muted", text: lake.objects + " objects · " + num(lake.rows, 0) + " rows" })),
        lake.exists ? queryBox(lake.query) : h("div", { class: "empty", text: "Nothing written here yet." }),
        h("div", { class: "lake-grid" },
          h("div", { class: "partitions" }, h("h3", { text: "Partitions" }), list),
          h("div", {}, part ? h("div", {}, h("h3", {}, "Objects in " + (current || "/") + " ",
            h("button", { type: "button", class: "preview-partition", text: "preview partition",
                          onclick: () => preview(i, current) })), objects) : null,
            previews.get(i))));
    }
    async function load() {
      try {
        const d = await getJSON("/api/lake");
        if (!d.lakes.length) {
          root.replaceChildren(h("div", { class: "empty", text:
            "No lake to show: start the dashboard with --config (an s3 target with local-path) or --lake DIR." }));
          return;
        }
        root.replaceChildren(...d.lakes.map(render));
      } catch (e) {
        root.replaceChildren(h("div", { class: "badge down", text: String(e.message || e) }));
      }
    }
    // The broker status, for the header.
    connect({ page: "lake" }, { snapshot() {} });
    load();
    setInterval(load, 10000);
  }

  ({ line: linePage, uns: unsPage, pipeline: pipelinePage, lake: lakePage })[page]();
})();
