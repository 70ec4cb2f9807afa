// Zoomable panels of one product's summaries (python -m views.plot): uPlot, no network.
(function () {
  "use strict";
  const d = JSON.parse(document.getElementById("data").textContent);
  const host = document.getElementById("panels");
  const width = () => Math.max(600, window.innerWidth - 60);
  const sync = uPlot.sync("panels");
  const charts = [];

  function zoomAll(u) {
    // every panel follows the x range selected on one
    const min = u.scales.x.min, max = u.scales.x.max;
    for (const c of charts) if (c !== u) c.setScale("x", { min, max });
  }

  function panel(title, series, data, extra) {
    const h = document.createElement("h2");
    h.textContent = title;
    h.className = "panel-title";
    host.appendChild(h);
    const div = document.createElement("div");
    host.appendChild(div);
    const opts = Object.assign({
      width: width(), height: 220,
      cursor: { sync: { key: sync.key }, drag: { x: true, y: false } },
      scales: { x: { time: true } },
      series: [{}].concat(series),
      hooks: { setSelect: [zoomAll] },
    }, extra || {});
    const chart = new uPlot(opts, data, div);
    charts.push(chart);
    return chart;
  }

  const t = d.t;
  panel(d.panels[0], [
    { label: "mid", stroke: "#1f77b4", width: 1 },
    { label: "microprice", stroke: "#ff7f0e", width: 1 },
  ], [t, d.mid, d.microprice]);
  panel(d.panels[1], [
    { label: "spread bps", stroke: "#2ca02c", width: 1 },
    { label: "threshold " + d.threshold_bps + " bps", stroke: "#d62728", dash: [6, 4], width: 1 },
  ], [t, d.spread_bps, t.map(() => d.threshold_bps)], {
    scales: { x: { time: true }, y: { distr: d.spread_bps.every((v) => v === null || v > 0) ? 3 : 1 } },
  });
  panel(d.panels[2], [
    { label: "imbalance", stroke: "#9467bd", width: 1 },
  ], [t, d.imbalance], {
    scales: { x: { time: true }, y: { range: [0, 1] } },
  });
  window.addEventListener("resize", () => {
    for (const c of charts) c.setSize({ width: width(), height: 220 });
  });
  document.title = d.product + " [" + d.feed + "] order book summaries";
})();
