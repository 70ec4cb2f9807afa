// Order book dashboard: one card per product, fed over the WebSocket at /ws.
// Everything is drawn with uPlot (vendored under /static/uplot); nothing is fetched
// from the network. window.dashboardStats counts draws, for tests and the curious.
(function () {
  "use strict";
  const cards = new Map();
  const stats = {};
  window.dashboardStats = stats;
  let historySeconds = 600;
  let threshold = 0.1;
  let retry = 500;
  let run = null;  // the server's run: another one after a reconnect is a restart

  const $ = (tag, cls, text) => {
    const el = document.createElement(tag);
    if (cls) el.className = cls;
    if (text !== undefined) el.textContent = text;
    return el;
  };
  const fmt = (v, d) => (v === null || v === undefined ? "-" : Number(v).toLocaleString("en-US", { minimumFractionDigits: d, maximumFractionDigits: d }));
  const chartWidth = (card) => Math.max(320, card.el.clientWidth - 26);

  function card(product) {
    if (cards.has(product)) return cards.get(product);
    const el = $("section", "product");
    el.dataset.product = product;
    const title = $("h2");
    title.append($("span", "name", product), $("span", "feed"), $("span", "state awaiting", "awaiting snapshot"));
    const statsBox = $("div", "stats");
    const imbar = $("div", "imbar");
    imbar.append($("div"));
    const depthTitle = $("div", "chart-title", "depth: cumulative size by price (bids green, asks red)");
    const depthBox = $("div", "depth");
    const seriesTitle = $("div", "chart-title", "spread (bps of ask, left) and mid (right), last minutes");
    const seriesBox = $("div", "series");
    const imbTitle = $("div", "chart-title", "imbalance: bid size / (bid + ask size) at the top");
    const imbBox = $("div", "imbalance");
    el.append(title, statsBox, imbar, depthTitle, depthBox, seriesTitle, seriesBox, imbTitle, imbBox);
    insertSorted(el, product);
    const c = { el, title, statsBox, imbar, depthBox, seriesBox, imbBox, depth: null, series: null, imb: null,
      t: [], spread: [], mid: [], imbalance: [] };
    stats[product] = { depthDraws: 0, seriesDraws: 0, imbalanceDraws: 0, depthSignature: "", seriesPoints: 0, updates: 0 };
    c.series = new uPlot({
      width: chartWidth(c), height: 150,
      scales: { x: { time: true }, bps: { auto: true }, price: { auto: true } },
      axes: [{}, { scale: "bps", label: "bps", size: 60 }, { scale: "price", side: 1, size: 80, grid: { show: false } }],
      series: [{}, { label: "spread bps", scale: "bps", stroke: "#2ca02c", width: 1.5, points: { show: false } },
        { label: "mid", scale: "price", stroke: "#1f77b4", width: 1, points: { show: false } }],
      hooks: { draw: [() => { stats[product].seriesDraws++; }] },
    }, [[], [], []], seriesBox);
    c.imb = new uPlot({
      width: chartWidth(c), height: 90, legend: { show: false },
      scales: { x: { time: true }, y: { range: [0, 1] } },
      axes: [{}, { size: 60, splits: () => [0, 0.5, 1] }],
      series: [{}, { label: "imbalance", stroke: "#9467bd", width: 1, points: { show: false } }],
      hooks: { draw: [() => { stats[product].imbalanceDraws++; }] },
    }, [[], []], imbBox);
    cards.set(product, c);
    return c;
  }

  function insertSorted(el, product) {
    const main = document.getElementById("products");
    for (const other of main.children) {
      if (other.dataset.product > product) { main.insertBefore(el, other); return; }
    }
    main.appendChild(el);
  }

  function depthData(bids, asks) {
    // both sides over the same distance from mid (the nearer of the two sides' reach),
    // x ascending: bid prices (low to best), then ask prices (best to high)
    if (bids.length && asks.length) {
      const mid = (bids[0][0] + asks[0][0]) / 2;
      const reach = Math.min(mid - bids[bids.length - 1][0], asks[asks.length - 1][0] - mid);
      bids = bids.filter(([p]) => mid - p <= reach);
      asks = asks.filter(([p]) => p - mid <= reach);
    }
    const x = [], bidCum = [], askCum = [];
    let total = 0;
    const cumBids = bids.map(([p, s]) => [p, (total += s)]);
    for (let i = cumBids.length - 1; i >= 0; i--) {
      x.push(cumBids[i][0]); bidCum.push(cumBids[i][1]); askCum.push(null);
    }
    total = 0;
    for (const [p, s] of asks) {
      x.push(p); bidCum.push(null); askCum.push((total += s));
    }
    return [x, bidCum, askCum];
  }

  function drawDepth(c, product, row) {
    if (!row.bids.length && !row.asks.length) {
      if (!c.depthBox.querySelector(".nodepth")) c.depthBox.replaceChildren($("div", "nodepth", "no depth records yet"));
      c.depth = null; stats[product].depthSignature = "";  // its chart left the page
      return;
    }
    const data = depthData(row.bids, row.asks);
    const signature = JSON.stringify([row.bids[0], row.asks[0], data[1][0], data[2][data[2].length - 1]]);
    if (signature === stats[product].depthSignature && c.depth) return;
    stats[product].depthSignature = signature;
    if (!c.depth) {
      c.depthBox.replaceChildren();
      c.depth = new uPlot({
        width: chartWidth(c), height: 170, legend: { show: false },
        scales: { x: { time: false } },
        axes: [{ space: 90, values: (u, v) => v.map((x) => fmt(x, u.scales.x.max - u.scales.x.min > 20 ? 0 : 2)) }, { size: 60 }],
        series: [{ label: "price", value: (u, v) => fmt(v, 2) },
          { label: "bids", stroke: "#1a7f37", fill: "rgba(26,127,55,0.18)", width: 1.5, paths: uPlot.paths.stepped({ align: -1 }), points: { show: false } },
          { label: "asks", stroke: "#c62828", fill: "rgba(198,40,40,0.18)", width: 1.5, paths: uPlot.paths.stepped({ align: 1 }), points: { show: false } }],
        hooks: { draw: [() => { stats[product].depthDraws++; }] },
      }, data, c.depthBox);
    } else {
      c.depth.setData(data);
    }
  }

  function appendHistory(c, product, points) {
    if (!points.length) return;
    for (const [, t, mid, bps, imb] of points) {
      if (c.t.length && t < c.t[c.t.length - 1] - 5) {  // the server started again
        c.t = []; c.mid = []; c.spread = []; c.imbalance = [];
      }
      if (c.t.length && t <= c.t[c.t.length - 1]) continue;
      c.t.push(t); c.mid.push(mid); c.spread.push(bps); c.imbalance.push(imb);
    }
    const cutoff = c.t[c.t.length - 1] - historySeconds;
    let drop = 0;
    while (drop < c.t.length && c.t[drop] < cutoff) drop++;
    if (drop) { c.t.splice(0, drop); c.mid.splice(0, drop); c.spread.splice(0, drop); c.imbalance.splice(0, drop); }
    c.series.setData([c.t, c.spread, c.mid]);
    c.imb.setData([c.t, c.imbalance]);
    stats[product].seriesPoints = c.t.length;
    stats[product].lastSpread = c.spread[c.spread.length - 1];
  }

  function drawStats(c, row) {
    const state = c.title.querySelector(".state");
    if (row.state !== "awaiting snapshot") c.restarted = false;
    state.textContent = row.state + (c.restarted ? " (restarted)" : "") + (row.age === null ? "" : " · " + row.age.toFixed(1) + "s ago");
    state.className = "state " + row.state.split(" ")[0];
    c.title.querySelector(".feed").textContent = row.feed ? "[" + row.feed + "]" : "";
    c.el.classList.toggle("wide", !!row.wide);
    const liq = row.bid_liquidity_10bps === null ? "-" : fmt(row.bid_liquidity_10bps, 3) + " / " + fmt(row.ask_liquidity_10bps, 3);
    const cells = [
      ["bid", `<b class="bid">${fmt(row.bid_price, 2)}</b> × ${fmt(row.bid_size, 4)}`],
      ["ask", `<b class="ask">${fmt(row.ask_price, 2)}</b> × ${fmt(row.ask_size, 4)}`],
      ["spread", `<b>${row.spread_bps === null ? "-" : row.spread_bps.toFixed(4)}</b> bps (${row.spread_pct === null ? "-" : row.spread_pct.toFixed(6)}%)`],
      ["mid", `${fmt(row.mid, 3)} · micro ${fmt(row.microprice, 3)}`],
      ["imbalance", fmt(row.imbalance, 3)],
      ["liq ±10bps", liq],
      ["updates/s", row.rate.toFixed(1)],
      ["lag", row.lag === null ? "-" : row.lag.toFixed(2) + " s"],
      // the server sends only match/drift/skipped/failed (views/state.py)
      ["audit", row.audit ? `<b class="audit-${row.audit}">${row.audit}</b> ${row.audit_age.toFixed(0)} s ago` : "-"],
    ];
    c.statsBox.innerHTML = cells.map(([k, v]) => `<span>${k}: ${v}</span>`).join("");
    c.imbar.firstChild.style.width = ((row.imbalance ?? 0.5) * 100).toFixed(1) + "%";
  }

  // The process restarted (a new run after a reconnect): every book is rebuilt from a
  // fresh snapshot, so what the cards show is of the run before. Each card awaits its
  // product's first record of the new run (a cluster member sends none before); the
  // series keep their points, so the outage shows as a gap in them.
  function restarted() {
    const blank = { state: "awaiting snapshot", age: null, feed: "", wide: false, rate: 0, lag: null,
      bid_price: null, bid_size: null, ask_price: null, ask_size: null, spread_bps: null, spread_pct: null,
      mid: null, microprice: null, imbalance: null, bid_liquidity_10bps: null, bids: [], asks: [] };
    for (const [product, c] of cards) {
      c.restarted = true;
      drawStats(c, blank);
      drawDepth(c, product, blank);
      stats[product].restarts = (stats[product].restarts || 0) + 1;
    }
  }

  function onUpdate(msg) {
    for (const row of msg.products) {
      const c = card(row.product_id);
      stats[row.product_id].updates++;
      drawStats(c, row);
      drawDepth(c, row.product_id, row);
      appendHistory(c, row.product_id, row.history || []);
    }
    document.getElementById("summary").textContent =
      cards.size + " products · highlighted: spread > " + threshold + "% of the ask";
  }

  function connect() {
    const conn = document.getElementById("connection");
    const ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws");
    ws.onopen = () => { conn.textContent = "live"; conn.className = "state connected"; retry = 500; };
    ws.onmessage = (event) => {
      const msg = JSON.parse(event.data);
      if (msg.type === "hello") {
        historySeconds = msg.history_seconds; threshold = msg.threshold_pct;
        if (run !== null && msg.run !== run) restarted();
        run = msg.run;
      } else if (msg.type === "update") {
        onUpdate(msg);
      }
    };
    ws.onclose = () => {
      conn.textContent = "disconnected, retrying"; conn.className = "state closed";
      setTimeout(connect, retry); retry = Math.min(retry * 2, 10000);
    };
  }

  window.addEventListener("resize", () => {
    for (const c of cards.values()) {
      for (const [chart, h] of [[c.depth, 170], [c.series, 150], [c.imb, 90]]) if (chart) chart.setSize({ width: chartWidth(c), height: h });
    }
  });
  connect();
})();
