// The dispatcher console's only script (served from the package, no CDN, no build step).
// It never turns text into markup: the live section is parsed by DOMParser from the
// server's escaped HTML (scripts in it never run), filters compare text.
"use strict";

function refreshLive(live) {
  const every = Number(live.dataset.every) || 5000;
  let timer = null;
  async function tick() {
    try {
      const response = await fetch(live.dataset.src, {
        credentials: "same-origin",
        cache: "no-store",
        redirect: "error",
      });
      if (response.status === 401) {
        window.location.reload(); // the session ended: the login form
        return;
      }
      if (response.ok) {
        const doc = new DOMParser().parseFromString(await response.text(), "text/html");
        live.replaceChildren(...Array.from(doc.body.childNodes));
        live.dataset.refreshed = String(Date.now());
      }
    } catch (error) {
      // A failed refresh keeps the last view; the next tick tries again.
    }
    timer = window.setTimeout(tick, every);
  }
  timer = window.setTimeout(tick, every);
  document.addEventListener("visibilitychange", () => {
    if (document.hidden && timer !== null) {
      window.clearTimeout(timer);
      timer = null;
    } else if (!document.hidden && timer === null) {
      tick();
    }
  });
}

function filterRows(input) {
  const rows = document.querySelectorAll(input.dataset.filter);
  const apply = () => {
    const needle = input.value.trim().toLowerCase();
    for (const row of rows) {
      const text = row.dataset.search;
      if (text !== undefined) row.hidden = needle !== "" && !text.includes(needle);
    }
  };
  input.addEventListener("input", apply);
}

document.addEventListener("DOMContentLoaded", () => {
  const live = document.getElementById("live");
  if (live && live.dataset.src) refreshLive(live);
  for (const input of document.querySelectorAll("input[data-filter]")) filterRows(input);
  for (const button of document.querySelectorAll("button[data-confirm]")) {
    button.addEventListener("click", (event) => {
      if (!window.confirm(button.dataset.confirm)) event.preventDefault();
    });
  }
});
