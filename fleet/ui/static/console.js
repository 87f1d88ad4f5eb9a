// edgeops console: charts (uPlot), API actions with confirmation and CSRF, quiet live polling.
// No inline script: the pages run under a Content-Security-Policy of 'self' only.
(function () {
  "use strict";

  function csrf() {
    var m = document.querySelector('meta[name="csrf-token"]');
    return m ? m.getAttribute("content") : "";
  }

  // --- charts: every .chart[data-chart] draws the JSON of the script element with that id ------
  function drawCharts(root) {
    (root || document).querySelectorAll(".chart[data-chart]").forEach(function (el) {
      var src = document.getElementById(el.getAttribute("data-chart"));
      if (!src) return;
      var spec = JSON.parse(src.textContent);
      el.textContent = "";
      if (!spec.ts || spec.ts.length === 0) {
        el.textContent = "no data yet";
        el.classList.add("empty");
        return;
      }
      var colours = ["#2f6fde", "#d9480f", "#2b8a3e", "#7048e8"];
      var series = [{}];
      var data = [spec.ts];
      var scales = { x: { time: true } };
      if (spec.ts.length === 1) scales.x.range = [spec.ts[0] - 60, spec.ts[0] + 60];  // one sample: a two-minute window, not years
      spec.series.forEach(function (s, i) {
        var scale = s.scale || "y";
        if (!scales[scale]) scales[scale] = { auto: true };
        series.push({ label: s.label, stroke: colours[i % colours.length], width: 2, scale: scale, dash: s.dash ? [6, 4] : undefined, spanGaps: true, points: { show: spec.ts.length < 30 } });
        data.push(s.values);
      });
      var axes = [{}, { scale: "y" }];
      if (scales.rate) axes.push({ scale: "rate", side: 1, grid: { show: false } });
      var width = Math.max(320, Math.min(900, el.clientWidth || 600));
      new uPlot({ width: width, height: 180, series: series, scales: scales, axes: axes, legend: { show: true } }, data, el);
    });
  }

  // --- live fragments: skip the swap when the polled HTML did not change (a 304 revalidation
  // hands the browser's cached copy to htmx, which would otherwise redraw the same thing) ------
  var lastBody = new WeakMap();
  document.addEventListener("htmx:beforeSwap", function (evt) {
    var target = evt.detail.target;
    var text = evt.detail.xhr.responseText;
    if (evt.detail.xhr.status === 200 && lastBody.get(target) === text) {
      evt.detail.shouldSwap = false;
    }
    lastBody.set(target, text);
  });
  document.addEventListener("htmx:afterSettle", function (evt) { drawCharts(evt.detail.target); });

  function refreshLive() {
    document.querySelectorAll("[hx-get][hx-trigger*='every']").forEach(function (el) {
      htmx.ajax("GET", el.getAttribute("hx-get"), { target: el, swap: "innerHTML" });
    });
  }

  // --- actions: call the REST API with the session cookie and the page's CSRF token ------------
  function act(el) {
    var question = el.getAttribute("data-confirm");
    if (question && !window.confirm(question)) return;
    var body = null;
    if (el.tagName === "FORM") {
      body = {};
      new FormData(el).forEach(function (v, k) { body[k] = v; });
      body = JSON.stringify(body);
    }
    var out = el.querySelector(".result") || document.getElementById("action-result");
    fetch(el.getAttribute("data-url"), {
      method: el.getAttribute("data-method") || "POST",
      credentials: "same-origin",
      headers: { "X-CSRF-Token": csrf(), "Content-Type": "application/json" },
      body: body,
    }).then(function (r) {
      return r.json().then(function (j) { return { ok: r.ok, status: r.status, json: j }; });
    }).then(function (res) {
      var text = res.ok ? "done" + (res.json.status ? ": " + res.json.status : "") + (res.json.command_id ? " (command " + res.json.command_id + ")" : "") : res.status + ": " + res.json.error;
      if (out) { out.textContent = text; out.className = res.ok ? "result ok" : "result error"; }
      refreshLive();
    });
  }
  document.addEventListener("click", function (evt) {
    var el = evt.target.closest("button.api-action");
    if (el) { evt.preventDefault(); act(el); }
  });
  document.addEventListener("submit", function (evt) {
    if (evt.target.classList.contains("api-action")) { evt.preventDefault(); act(evt.target); }
  });

  document.addEventListener("DOMContentLoaded", function () { drawCharts(document); });
})();
