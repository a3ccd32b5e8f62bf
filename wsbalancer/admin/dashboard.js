// The admin dashboard: reads the balancer's JSON distribution every second and draws it.
// A file of its own so the page's Content-Security-Policy allows no inline script.
(function () {
  "use strict";
  var source = document.body.getAttribute("data-source") || "../balancer-metrics";
  // Every string below comes from backends or the balancer: it is only ever set as text.
  function cell(row, text, cls) {
    var td = document.createElement("td");
    td.textContent = text === null || text === undefined ? "–" : String(text);
    if (cls) { td.className = cls; }
    row.appendChild(td);
    return td;
  }
  function bar(row, value, max) {
    var td = document.createElement("td");
    td.className = "barcell";
    var div = document.createElement("div");
    div.className = "bar";
    div.style.width = (max > 0 ? Math.round(100 * value / max) : 0) + "%";
    td.appendChild(div);
    row.appendChild(td);
  }
  function state(b) {
    if (!b.enabled) { return ["disabled", "bad"]; }
    if (b.draining) { return ["draining", "warn"]; }
    if (b.health !== "up") { return ["down", "bad"]; }
    if (b.ejectedUntil) { return ["ejected", "bad"]; }
    if (b.breaker !== "closed") { return ["breaker " + b.breaker, "warn"]; }
    if (b.stale) { return ["up (count stale)", "warn"]; }
    return ["up", "ok"];
  }
  function stateCell(row, s) {
    var td = cell(row, "", "state-cell");
    var span = document.createElement("span");
    span.className = "state " + s[1];
    span.textContent = s[0];
    td.appendChild(span);
  }
  function poolOf(doc, b) {
    if (b.pool) { return b.pool; }
    var found = null;
    Object.keys(doc.pools || {}).forEach(function (name) {
      if ((doc.pools[name].backends || []).indexOf(b.id) >= 0) { found = name; }
    });
    return found || doc.defaultPool || "default";
  }
  function render(doc) {
    var pools = Object.keys(doc.pools || {});
    document.getElementById("summary").textContent =
      doc.totalConnections + " connections on " + doc.backends.length + " backends" +
      (pools.length > 1 ? " in " + pools.length + " pools" : "") + " · " +
      doc.sessions + " sessions through this instance · " + doc.strategy +
      (doc.ready ? " · ready" : " · NOT READY") + " · " + doc.timestamp;
    var max = Math.max.apply(null, doc.backends.map(function (b) { return b.connections; }).concat([0]));
    var tbody = document.getElementById("backends");
    tbody.textContent = "";
    doc.backends.forEach(function (b) {
      var row = document.createElement("tr");
      var s = state(b);
      row.setAttribute("data-backend", b.id);
      if (s[1] === "bad") { row.className = "down"; }
      cell(row, b.id + " — " + b.url);
      cell(row, poolOf(doc, b), "pool");
      stateCell(row, s);
      cell(row, b.connections, "num count");
      bar(row, b.connections, max);
      cell(row, b.localSessions, "num");
      cell(row, b.weight, "num");
      tbody.appendChild(row);
    });
    var pods = document.getElementById("pods");
    pods.textContent = "";
    var podMax = 0;
    Object.keys(doc.podMetrics).forEach(function (url) {
      doc.podMetrics[url].forEach(function (p) { podMax = Math.max(podMax, p.agentsConnections); });
    });
    doc.backends.forEach(function (b) {
      var s = state(b);
      (doc.podMetrics[b.url] || []).forEach(function (p) {
        var row = document.createElement("tr");
        row.setAttribute("data-backend", b.id);
        // the counts are the last ones the pod reported: a down backend's pod is shown down
        if (s[1] === "bad") { row.className = "down"; }
        cell(row, p.podName, "pod-name");
        cell(row, b.id);
        stateCell(row, s);
        cell(row, p.podIP);
        cell(row, p.nodeName);
        cell(row, p.agentsConnections, "num");
        bar(row, p.agentsConnections, podMax);
        pods.appendChild(row);
      });
    });
    renderTraffic(doc);
    var events = document.getElementById("events");
    events.textContent = "";
    (doc.events || []).slice().reverse().forEach(function (e) {
      var li = document.createElement("li");
      li.textContent = e.time + "  " + e.text;
      events.appendChild(li);
    });
  }
  function ms(seconds) {
    return seconds === null || seconds === undefined ? null : (1000 * seconds).toFixed(2);
  }
  function closes(codes) {
    return Object.keys(codes || {}).sort().map(function (code) {
      return code + " ×" + codes[code];
    }).join("  ") || null;
  }
  // Per backend: what its legs carried each way and how fast it answered; a backend whose
  // p90 is more than twice the others' median p90 is marked, so per-message slowness shows.
  function renderTraffic(doc) {
    var m = doc.migrations || {};
    document.getElementById("migrations").textContent = "· migrations: " +
      (m.migrated || 0) + " migrated, " + (m.skipped || 0) + " skipped, " + (m.failed || 0) + " failed";
    var p90s = doc.backends.map(function (b) { return b.traffic ? b.traffic.responseTime.p90 : null; })
      .filter(function (v) { return v !== null; }).sort(function (a, b) { return a - b; });
    var median = p90s.length ? p90s[Math.floor((p90s.length - 1) / 2)] : null;
    var tbody = document.getElementById("traffic");
    tbody.textContent = "";
    doc.backends.forEach(function (b) {
      var t = b.traffic;
      if (!t) { return; }
      var row = document.createElement("tr");
      row.setAttribute("data-backend", b.id);
      var r = t.responseTime;
      cell(row, b.id);
      cell(row, t.messagesToBackend, "num");
      cell(row, t.messagesToClient, "num");
      cell(row, t.bytesToBackend, "num");
      cell(row, t.bytesToClient, "num");
      cell(row, r.count, "num");
      cell(row, ms(r.p50), "num p50");
      var slow = p90s.length > 1 && r.p90 !== null && median !== null && r.p90 > 2 * median;
      cell(row, ms(r.p90), "num p90" + (slow ? " slow" : ""));
      cell(row, ms(r.p99), "num p99");
      cell(row, closes(t.closeCodes.client), "closes-client");
      cell(row, closes(t.closeCodes.backend), "closes-backend");
      tbody.appendChild(row);
    });
  }
  function refresh() {
    fetch(source, { cache: "no-store" }).then(function (r) { return r.json(); }).then(function (doc) {
      document.getElementById("error").textContent = "";
      render(doc);
    }).catch(function (err) {
      document.getElementById("error").textContent = "(update failed: " + err + ")";
    }).finally(function () { setTimeout(refresh, 1000); });
  }
  refresh();
})();
