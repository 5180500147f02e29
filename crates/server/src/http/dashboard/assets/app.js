// jobward dashboard: short polling for live regions, and confirmations. No dependencies.
(function () {
  "use strict";
  document.addEventListener("submit", function (e) {
    var msg = e.target.getAttribute("data-confirm");
    if (msg && !window.confirm(msg)) e.preventDefault();
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
