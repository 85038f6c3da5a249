// dcim web console: live updates by server-sent events (/events/stream). No framework, no build step.
// The hall's cells are updated in place; the other pages fetch themselves again when what they show
// changed (never while a form field has the focus: that would throw away what is being typed), and what an
// operator changed in a form (a shelve time chosen, a comment typed) is kept in the same form of the new page.
"use strict";
(function () {
  const body = document.body;
  const live = body.dataset.live || "";
  const conn = document.getElementById("conn");
  let refreshing = false;
  let again = false;

  function setConn(state, text) {
    if (!conn) return;
    conn.className = "conn " + state;
    conn.textContent = text;
  }

  function updateRack(r) {
    const cell = document.getElementById("rack-" + r.id);
    if (!cell) return;
    cell.className = r.css;
    cell.dataset.status = r.status;
    cell.title = r.title;
    const util = r.utilization_pct === null ? "-" : Math.round(r.utilization_pct) + "%";
    const power = r.power_kw === null ? "no reading" : r.power_kw.toFixed(1) + " kW";
    const cool = r.coolant === "none" ? "air" : (r.coolant === "ok" ? "coolant ok" : "coolant " + r.coolant);
    const alarms = r.alarms ? r.alarms + (r.alarms === 1 ? " alarm" : " alarms") : "";
    const fields = { util: util, power: power, coolant: cool, alarms: alarms };
    for (const [name, text] of Object.entries(fields)) {
      const el = cell.querySelector('[data-f="' + name + '"]');
      if (el) el.textContent = text;
    }
  }

  // A form is the same form on the next render when its action and hidden fields are (an alarm's shelve form).
  function formKey(form) {
    const hidden = Array.from(form.querySelectorAll("input[type=hidden]")).map((el) => el.name + "=" + el.value);
    return (form.getAttribute("action") || "") + "?" + hidden.join("&");
  }

  // The fields the operator changed from what the page was rendered with, by form.
  function edits(root) {
    const saved = new Map();
    root.querySelectorAll("form").forEach((form) => {
      const changed = [];
      form.querySelectorAll("select, textarea, input:not([type=hidden])").forEach((el) => {
        if (!el.name || el.type === "password") return;
        if (el.tagName === "SELECT") {
          const initial = Array.from(el.options).find((o) => o.defaultSelected) || el.options[0];
          if (initial && !initial.selected) changed.push([el.name, el.value]);
        } else if (el.type === "checkbox" || el.type === "radio") {
          if (el.checked !== el.defaultChecked) changed.push([el.name, el.checked, el.value]);
        } else if (el.value !== el.defaultValue) {
          changed.push([el.name, el.value]);
        }
      });
      if (changed.length) saved.set(formKey(form), changed);
    });
    return saved;
  }

  function restore(root, saved) {
    if (!saved.size) return;
    root.querySelectorAll("form").forEach((form) => {
      const changed = saved.get(formKey(form));
      if (!changed) return;
      for (const [name, value, checkedValue] of changed) {
        form.querySelectorAll("[name]").forEach((el) => {
          if (el.name !== name) return;
          if (el.type === "checkbox" || el.type === "radio") {
            if (el.value === checkedValue) el.checked = value;
          } else {
            el.value = value;
          }
        });
      }
    });
  }

  async function refresh() {
    // One refresh at a time; a change during one asks for another after it.
    if (refreshing) { again = true; return; }
    const focused = document.activeElement;
    if (focused && focused.closest && focused.closest("main form")) { again = true; return; }
    refreshing = true;
    try {
      const response = await fetch(window.location.href, { credentials: "same-origin", cache: "no-store" });
      if (response.ok) {
        const doc = new DOMParser().parseFromString(await response.text(), "text/html");
        const fresh = doc.getElementById("main");
        const main = document.getElementById("main");
        if (fresh && main) {
          fresh.querySelectorAll(".flash").forEach((el) => el.remove());
          main.querySelectorAll(".flash").forEach((el) => fresh.prepend(el));
          const saved = edits(main);
          main.replaceChildren(...fresh.childNodes);
          restore(main, saved);
        }
      }
    } catch (err) {
      // The stream's own reconnect shows the outage; the next event refreshes again.
    } finally {
      refreshing = false;
      if (again) { again = false; setTimeout(refresh, 1000); }
    }
  }

  function alarmsLink(counts) {
    const link = document.querySelector('nav a[href="/alarms"]');
    if (!link) return;
    link.textContent = counts.active ? "Alarms (" + counts.active + ")" : "Alarms";
    link.classList.toggle("hot", counts.critical > 0);
  }

  // The devices page's "last good poll" moves on every poll: a quiet look every 5 s, not an event each time.
  if (live === "devices") setInterval(refresh, 5000);

  if (!window.EventSource) return;
  const stream = new EventSource("/events/stream");
  let seen = { hall: false, alarms: false, devices: false };
  stream.onopen = function () { setConn("live", "live"); };
  stream.onerror = function () { setConn("lost", "reconnecting"); };
  stream.addEventListener("hall", function (ev) {
    const data = JSON.parse(ev.data);
    data.racks.forEach(updateRack);
    if (live.startsWith("rack:")) {
      const id = live.slice(5);
      if (!data.full && data.racks.some((r) => r.id === id)) refresh();
    }
    seen.hall = true;
  });
  stream.addEventListener("alarms", function (ev) {
    const counts = JSON.parse(ev.data);
    alarmsLink(counts);
    // The first message describes the page as it was rendered: refresh only on changes after it.
    if (seen.alarms && (live === "alarms" || live === "events")) refresh();
    seen.alarms = true;
  });
  stream.addEventListener("devices", function () {
    if (seen.devices && live === "devices") refresh();
    seen.devices = true;
  });
})();
