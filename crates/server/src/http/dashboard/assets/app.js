// jobward dashboard: short polling for live regions, and confirmations. No dependencies.
(function () {
  "use strict";
  document.addEventListener("submit", function (e) {
    var msg = e.target.getAttribute("data-confirm");
    if (msg && !window.confirm(msg)) e.preventDefault();
    // A bulk action says how many and which before anything changes.
    var field = e.target.getAttribute("data-confirm-count");
    if (field) {
      var ids = Array.prototype.map.call(
        e.target.querySelectorAll("input[name=" + field + "]:checked"),
        function (i) { return i.value; });
      var what = (e.submitter && e.submitter.value) || "change";
      if (!ids.length) { window.alert("Select executions first."); e.preventDefault(); return; }
      var n = ids.length + (ids.length === 1 ? " execution" : " executions");
      if (!window.confirm(what.charAt(0).toUpperCase() + what.slice(1) + " " + n + ": " + ids.join(", ") + "?")) e.preventDefault();
    }
  });
  document.addEventListener("change", function (e) {
    if (e.target.id !== "select-all") return;
    var form = e.target.closest("form");
    if (form) form.querySelectorAll("input[name=id]").forEach(function (b) { b.checked = e.target.checked; });
  });
  var body = document.body;
  var every = Number(body.getAttribute("data-poll")) || 0;
  if (!every) return;
  var stamp = document.getElementById("live-stamp");
  function tick() {
    fetch(window.location.href, { credentials: "same-origin", headers: { "X-Jobward-Poll": "1" } })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) {
        if (html === null) return true;
        var doc = new DOMParser().parseFromString(html, "text/html");
        doc.querySelectorAll("[data-live]").forEach(function (fresh) {
          var cur = document.getElementById(fresh.id);
          if (cur && cur.innerHTML !== fresh.innerHTML) cur.replaceWith(document.importNode(fresh, true));
        });
        if (stamp) stamp.textContent = "live, updated " + new Date().toLocaleTimeString();
        // The server stops asking for polls once nothing on the page can change.
        return Number(doc.body.getAttribute("data-poll")) > 0;
      })
      .catch(function () { return true; })
      .then(function (again) {
        if (again) window.setTimeout(tick, every);
        else if (stamp) stamp.textContent = "final";
      });
  }
  window.setTimeout(tick, every);
})();
