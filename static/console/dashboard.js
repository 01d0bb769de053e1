/* Usage dashboard charts (Chart.js, vendored). Data comes from the page as JSON
   (<script type="application/json" id="usage-data">, Django's json_script); the same figures are
   in the page's table, so the charts are an enhancement. No inline script or style (CSP). */
(function () {
  "use strict";

  var PALETTE = ["#0b5fff", "#1a7f37", "#8250df", "#bf3989", "#9a6700", "#57606a"];

  function datasets(groups, stacked) {
    return Object.keys(groups).map(function (label, index) {
      return {
        label: label,
        data: groups[label],
        backgroundColor: PALETTE[index % PALETTE.length],
        borderColor: PALETTE[index % PALETTE.length],
        stack: stacked ? "all" : undefined
      };
    });
  }

  function draw(id, type, labels, sets, options) {
    var canvas = document.getElementById(id);
    if (!canvas) { return null; }
    var stacked = Boolean(options && options.stacked);
    return new window.Chart(canvas, {
      type: type,
      data: { labels: labels, datasets: sets },
      options: {
        animation: false,
        responsive: true,
        maintainAspectRatio: false,
        interaction: { mode: "index", intersect: false },
        plugins: { legend: { display: sets.length > 1, position: "bottom" } },
        scales: {
          x: { stacked: stacked, ticks: { maxRotation: 0, autoSkip: true, maxTicksLimit: 8 } },
          y: { stacked: stacked, beginAtZero: true }
        }
      }
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var source = document.getElementById("usage-data");
    if (!source || !window.Chart) { return; }
    var data = JSON.parse(source.textContent);
    var labels = data.labels;
    draw("chart-tokens", "bar", labels, datasets(data.tokens, true), { stacked: true });
    draw("chart-audio", "bar", labels, datasets(data.audio, true), { stacked: true });
    draw("chart-cost", "line", labels, [{
      label: "USD", data: data.cost, borderColor: PALETTE[0], backgroundColor: PALETTE[0], tension: 0, pointRadius: 2
    }]);
    draw("chart-activity", "bar", labels, datasets(data.activity, false));
  });
})();
