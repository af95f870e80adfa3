// ci-runner's web view: the one script of its pages (no build step, no library).
// A page that names a stream (body[data-live]) opens it with EventSource: "swap"
// events replace a region of the page by its id, "log" events append lines to the
// log shown, "log-reset" starts the log over (another step, or a re-run). Clocks of
// running steps tick here; times are shown in the reader's time zone.
"use strict";

(function () {
  const body = document.body;
  const skew = Number(body.dataset.now || 0) * 1000 - Date.now();  // server clock - ours

  function duration(seconds) {
    if (seconds < 60) return seconds < 10 ? seconds.toFixed(1) + "s" : Math.floor(seconds) + "s";
    const m = Math.floor(seconds / 60), s = Math.floor(seconds % 60);
    if (m < 60) return m + "m " + String(s).padStart(2, "0") + "s";
    return Math.floor(m / 60) + "h " + String(m % 60).padStart(2, "0") + "m";
  }

  function tick() {
    const now = (Date.now() + skew) / 1000;
    for (const el of document.querySelectorAll(".elapsed[data-since]")) {
      el.textContent = duration(Math.max(0, now - Number(el.dataset.since)));
    }
  }

  function localTimes(root) {
    for (const el of root.querySelectorAll("time[data-ts]")) {
      const when = new Date(Number(el.dataset.ts) * 1000);
      el.title = el.textContent;
      el.textContent = when.toLocaleString();
    }
  }

  function confirmForms(root) {
    for (const form of root.querySelectorAll("form[data-confirm]")) {
      if (form.dataset.bound) continue;
      form.dataset.bound = "1";
      form.addEventListener("submit", function (event) {
        if (!window.confirm(form.dataset.confirm)) event.preventDefault();
      });
    }
  }

  function fresh(root) {
    localTimes(root);
    confirmForms(root);
    tick();
  }

  const log = document.getElementById("log");
  function atBottom() {
    return window.innerHeight + window.scrollY >= document.body.scrollHeight - 40 ||
      (log && log.scrollHeight - log.scrollTop - log.clientHeight < 40);
  }
  function scrollDown() {
    if (!log) return;
    log.scrollTop = log.scrollHeight;
  }

  function fieldKey(field) {
    return (field.form ? field.form.getAttribute("action") : "") + "|" + field.name;
  }

  fresh(document);
  scrollDown();
  setInterval(tick, 1000);

  const url = body.dataset.live;
  if (!url || !window.EventSource) return;
  const stream = new EventSource(url);
  const note = document.getElementById("live-note");
  body.dataset.stream = "connecting";
  let broken = false;
  stream.addEventListener("open", function () {
    // Back after the server was away (a restart): the page is loaded afresh, as the
    // stream would start again from where the page began, not from where it broke.
    if (broken) window.location.reload();
    body.dataset.stream = "open";
  });

  stream.addEventListener("swap", function (event) {
    const region = JSON.parse(event.data);
    const old = document.getElementById(region.id);
    if (!old) return;
    const holder = document.createElement("template");
    holder.innerHTML = region.html.trim();
    const replacement = holder.content.firstElementChild;
    if (!replacement) return;
    // What is being typed in the region's forms is carried over, and the focus with it.
    const focused = document.activeElement;
    let refocus = null;
    for (const field of old.querySelectorAll("textarea, input:not([type]), input[type=text]")) {
      const key = fieldKey(field);
      const twin = Array.from(replacement.querySelectorAll("textarea, input:not([type]), input[type=text]"))
        .find(function (other) { return fieldKey(other) === key; });
      if (!twin) continue;
      twin.value = field.value;
      if (field === focused) refocus = twin;
    }
    old.replaceWith(replacement);
    if (refocus) refocus.focus();
    fresh(replacement);
  });

  // The log's last line, still being written: replaced whole by each "log" event.
  function openLine() {
    let line = document.getElementById("log-open");
    if (!line && log) {
      line = document.createElement("span");
      line.id = "log-open";
      log.appendChild(line);
    }
    return line;
  }

  stream.addEventListener("log", function (event) {
    if (!log) return;
    const follow = atBottom();
    const chunk = JSON.parse(event.data);
    const line = openLine();
    line.insertAdjacentHTML("beforebegin", chunk.html);
    line.innerHTML = chunk.open;
    // Very long logs keep their last lines in the page; the raw log has them all.
    while (log.childNodes.length > 20000 && log.firstChild !== line) log.removeChild(log.firstChild);
    if (follow) scrollDown();
  });

  stream.addEventListener("log-reset", function () {
    if (log) log.textContent = "";
    openLine();
    const leftOut = document.getElementById("log-note");
    if (leftOut) leftOut.remove();
  });

  stream.addEventListener("signed-out", function () {
    stream.close();
    window.location.assign("/sign-in?next=" + encodeURIComponent(location.pathname + location.search));
  });

  stream.addEventListener("gone", function (event) {
    stream.close();
    if (note) { note.textContent = JSON.parse(event.data).message; note.hidden = false; }
  });

  stream.addEventListener("error", function () {
    broken = true;
    if (stream.readyState === EventSource.CLOSED && note) note.hidden = false;
    body.dataset.stream = stream.readyState === EventSource.CLOSED ? "closed" : "reconnecting";
  });
})();
