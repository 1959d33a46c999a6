// The web dashboard: one small script for every page (docs/decisions/0019-web-dashboard.md).
// It reads everything from the /v1 JSON API with the session cookie and sends the CSRF
// token on every change; it builds the DOM with textContent only (no innerHTML with data).
// Leaflet sets a string tooltip as HTML: tooltips get a text node (plainTip), never a string.
"use strict";

(function () {
  const page = document.body.dataset.page;
  const content = document.getElementById("content");
  const LOCKED = "Vehicle.Cabin.Door.Row1.DriverSide.IsLocked";
  const SOC = "Vehicle.Powertrain.TractionBattery.StateOfCharge.Current";
  const FUEL = "Vehicle.Powertrain.FuelSystem.RelativeLevel";
  const LAT = "Vehicle.CurrentLocation.Latitude";
  const LON = "Vehicle.CurrentLocation.Longitude";
  const SPEED = "Vehicle.Speed";
  const MUNICH = [48.137, 11.575];
  const SERVICES = ["lock", "unlock", "horn_and_lights", "locate", "climate_start", "climate_stop"];
  const REASONS = {
    vehicle_moving: "the vehicle is moving",
    vehicle_offline: "the vehicle is offline",
    expired: "the vehicle did not answer in time",
    busy: "the vehicle is busy with another command",
    unsupported: "the vehicle does not support this",
  };

  // --- small helpers ---------------------------------------------------------------------

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "text") node.textContent = value;
      else if (key === "onclick") node.addEventListener("click", value);
      else if (key === "onsubmit") node.addEventListener("submit", value);
      else if (key === "onchange") node.addEventListener("change", value);
      else node.setAttribute(key, value === true ? "" : value);
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function cookie(name) {
    for (const part of document.cookie.split(";")) {
      const [key, ...rest] = part.trim().split("=");
      if (key === name) return decodeURIComponent(rest.join("="));
    }
    return "";
  }

  function notice(message, kind) {
    const box = document.getElementById("notice");
    box.textContent = message;
    box.className = "notice" + (kind ? " " + kind : "");
    box.hidden = !message;
  }

  function when(ms) {
    return ms ? new Date(ms).toLocaleString() : "never";
  }

  function num(value, digits, unit) {
    if (value === null || value === undefined) return "–";
    return Number(value).toFixed(digits) + (unit || "");
  }

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  function expired() {
    const back = encodeURIComponent(location.pathname + location.search);
    const why = cookie("tg_csrf") ? "expired=1&" : "";
    location.assign("/login?" + why + "next=" + back);
  }

  async function api(path, options) {
    const opts = Object.assign({ method: "GET", credentials: "same-origin" }, options || {});
    opts.headers = Object.assign({ Accept: "application/json" }, opts.headers || {});
    if (opts.method !== "GET") opts.headers["X-CSRF-Token"] = cookie("tg_csrf");
    if (opts.json !== undefined) {
      opts.headers["Content-Type"] = "application/json";
      opts.body = JSON.stringify(opts.json);
    }
    let response;
    try {
      response = await fetch(path, opts);
    } catch (err) {
      throw new ApiError(0, "network", "The gateway cannot be reached; check your connection.");
    }
    if (response.status === 401 && page !== "login") {
      expired();
      throw new ApiError(401, "expired", "Your session has expired: log in again.");
    }
    if (response.status === 204) return null;
    let body = null;
    try {
      body = await response.json();
    } catch (err) {
      body = null;
    }
    if (!response.ok) {
      const error = (body && body.error) || {};
      throw new ApiError(response.status, error.code || "error",
        error.message || "The gateway answered " + response.status + ".");
    }
    return body;
  }

  async function all(path) {
    const items = [];
    let cursor = null;
    for (let i = 0; i < 100; i++) {
      const sep = path.includes("?") ? "&" : "?";
      const page = await api(path + sep + "limit=1000" + (cursor ? "&cursor=" + encodeURIComponent(cursor) : ""));
      items.push(...page.items);
      if (!page.next) break;
      cursor = page.next;
    }
    return items;
  }

  function table(headers, rows, attrs) {
    return el("div", { class: "table-wrap" },
      el("table", attrs || {},
        el("thead", {}, el("tr", {}, ...headers.map((h) => el("th", { scope: "col", text: h })))),
        el("tbody", {}, ...rows)));
  }

  // --- maps ------------------------------------------------------------------------------

  function statusOf(p) {
    if (!p.online) return "offline";
    return p.speed && p.speed > 1 ? "moving" : "parked";
  }

  function colour(status) {
    return getComputedStyle(document.documentElement)
      .getPropertyValue(status === "moving" ? "--ok" : status === "parked" ? "--parked" : "--off")
      .trim();
  }

  async function makeMap(node) {
    const map = L.map(node, { zoomControl: true, preferCanvas: false }).setView(MUNICH, 13);
    const meta = (name) => document.querySelector(`meta[name="${name}"]`).content;
    const tiles = meta("tg-tile-url");
    if (tiles) {
      L.tileLayer(tiles, { maxZoom: 19, attribution: meta("tg-tile-attribution") }).addTo(map);
    } else {
      try {
        const roads = await (await fetch("/web/static/munich-roads.geojson")).json();
        L.geoJSON(roads, { interactive: false, style: { className: "roads", weight: 3 } }).addTo(map);
      } catch (err) {
        // the base layer is a nicety: the vehicles are drawn without it
      }
    }
    L.control.scale({ metric: true, imperial: false }).addTo(map);
    return map;
  }

  async function drawGeofences(map) {
    let fences = [];
    try {
      fences = await all("/v1/geofences");
    } catch (err) {
      return; // not every role may list geofences; the map works without them
    }
    for (const fence of fences) drawFence(map, fence);
  }

  // A tooltip's content as an element holding text: a name someone typed is never markup.
  function plainTip(text) {
    const span = document.createElement("span");
    span.textContent = text;
    return span;
  }

  function drawFence(map, fence) {
    const style = { color: colour("parked"), weight: 2, fillOpacity: 0.08, className: "geofence" };
    const name = fence.properties.name || "geofence " + fence.id;
    L.geoJSON(fence, { style }).bindTooltip(plainTip(name)).addTo(map);
  }

  // Drawing a geofence: click the map at each corner, name it, save (POST /v1/geofences;
  // the API decides who may, and its refusal is shown in words).
  function fenceDrawer(map) {
    let corners = [];
    let outline = null;
    const name = el("input", { id: "fence-name", type: "text", maxlength: "100", placeholder: "Depot" });
    const hint = el("span", { class: "muted", id: "fence-hint" });
    const save = el("button", { type: "button", id: "fence-save", disabled: true }, "Save geofence");
    const cancel = el("button", { type: "button", id: "fence-cancel" }, "Cancel");
    const editor = el("div", { class: "filters", id: "fence-editor", hidden: true },
      el("label", { for: "fence-name" }, "Name", name), save, cancel, hint);
    const start = el("button", { type: "button", id: "fence-draw" }, "Draw a geofence");
    const reset = () => {
      corners = [];
      if (outline) outline.remove();
      outline = null;
      editor.hidden = true;
      start.hidden = false;
      delete document.body.dataset.drawing;
      map.off("click", add);
    };
    const add = (event) => {
      corners.push([event.latlng.lng, event.latlng.lat]);
      if (outline) outline.remove();
      outline = L.polygon(corners.map(([lng, lat]) => [lat, lng]), { className: "fence-draft" }).addTo(map);
      save.disabled = corners.length < 3;
      hint.textContent = `${corners.length} corner(s); at least 3.`;
    };
    start.addEventListener("click", () => {
      start.hidden = true;
      editor.hidden = false;
      hint.textContent = "Click the map at each corner (at least 3).";
      document.body.dataset.drawing = "1";
      map.on("click", add);
    });
    cancel.addEventListener("click", reset);
    save.addEventListener("click", async () => {
      const ring = corners.concat([corners[0]]);
      const body = { type: "Feature", geometry: { type: "Polygon", coordinates: [ring] },
        properties: { name: name.value.trim() || "Geofence" } };
      try {
        drawFence(map, await api("/v1/geofences", { method: "POST", json: body }));
        notice("Geofence saved.", "info");
        reset();
      } catch (err) {
        notice("The geofence was not saved: " + err.message);
      }
    });
    return el("div", {}, start, editor);
  }

  // One marker per vehicle, created once and moved afterwards (never re-created).
  class Markers {
    constructor(map, onChange) {
      this.map = map;
      this.onChange = onChange;
      this.byVin = new Map();
      this.positions = new Map();
      this.filter = "all";
    }

    update(positions) {
      for (const p of positions) {
        const merged = Object.assign({}, this.positions.get(p.vin) || {}, p);
        this.positions.set(p.vin, merged);
        const status = statusOf(merged);
        let marker = this.byVin.get(p.vin);
        if (merged.lat !== null && merged.lat !== undefined && merged.lon !== null && merged.lon !== undefined) {
          if (!marker) {
            marker = L.circleMarker([merged.lat, merged.lon], {
              radius: 7, weight: 2, fillOpacity: 0.9, className: "vehicle-marker",
            }).bindTooltip(plainTip(p.vin)).addTo(this.map);
            marker.on("click", () => {
              // while a geofence is drawn, a click on a car is a corner, not a visit
              if (!document.body.dataset.drawing) location.assign("/vehicles/" + p.vin);
            });
            marker.getElement().dataset.vin = p.vin;
            if (stats.firstMarkerMs === undefined) stats.firstMarkerMs = performance.now();
            this.byVin.set(p.vin, marker);
          } else {
            marker.setLatLng([merged.lat, merged.lon]);
          }
          marker.setStyle({ color: colour(status), fillColor: colour(status) });
          marker.getElement().dataset.status = status;
          const shown = this.filter === "all" || this.filter === status;
          marker.getElement().classList.toggle("hidden-marker", !shown);
          marker.setStyle({ opacity: shown ? 1 : 0, fillOpacity: shown ? 0.9 : 0 });
        }
        if (this.onChange) this.onChange(merged, status);
      }
    }

    setFilter(filter) {
      this.filter = filter;
      this.update([...this.positions.values()]);
    }
  }

  // measurements for gateway/bench/web.py: when the page was ready and drew its first
  // marker (ms since navigation), and the lag of each live update (sample time -> applied)
  const stats = { lags: [] };
  window.tgStats = stats;

  function livePositions(onPositions) {
    // EventSource reconnects by itself (the stream says retry: 2000); each (re)connection
    // begins with a snapshot, which updates the existing markers
    const source = new EventSource("/v1/positions/stream");
    const handle = (event) => onPositions(JSON.parse(event.data));
    source.addEventListener("snapshot", handle);
    source.addEventListener("positions", (event) => {
      const positions = JSON.parse(event.data);
      onPositions(positions);
      const now = Date.now();
      for (const p of positions) stats.lags.push(now - p.ts);
      if (stats.lags.length > 10000) stats.lags.splice(0, stats.lags.length - 10000);
    });
    source.addEventListener("error", () => {
      if (source.readyState === EventSource.CLOSED) {
        notice("The live feed stopped: reload the page (your session may have expired).");
      }
    });
    return source;
  }

  // --- pages -----------------------------------------------------------------------------

  async function loginPage() {
    const params = new URLSearchParams(location.search);
    if (params.get("expired")) notice("Your session has expired: log in again.", "info");
    const email = el("input", { id: "email", name: "email", type: "email", autocomplete: "username", required: true });
    const password = el("input", { id: "password", name: "password", type: "password", autocomplete: "current-password", required: true });
    const form = el("form", { class: "login", onsubmit: async (event) => {
      event.preventDefault();
      try {
        await api("/v1/auth/session", { method: "POST", json: { email: email.value, password: password.value } });
        // only a page of this site: resolve "next" as the browser would ("//host",
        // "/\\host" and "/<tab>/host" all leave it) and keep it only if it stays here
        let target = "/";
        try {
          const url = new URL(params.get("next") || "/", location.origin);
          if (url.origin === location.origin) target = url.pathname + url.search + url.hash;
        } catch (err) { target = "/"; }
        location.assign(target);
      } catch (err) {
        notice(err.message);
      }
    } },
    el("label", { for: "email" }, "E-mail", email),
    el("label", { for: "password" }, "Password", password),
    el("button", { type: "submit", id: "submit" }, "Log in"));
    content.append(form);
  }

  async function mapPage() {
    const mapNode = el("div", { id: "map", class: "map", role: "region", "aria-label": "Map of your vehicles" });
    const filter = el("select", { id: "status-filter" },
      ...["all", "moving", "parked", "offline"].map((s) => el("option", { value: s, text: s })));
    const legend = el("div", { class: "legend" },
      el("label", { for: "status-filter" }, "Show ", filter),
      el("span", {}, el("span", { class: "dot moving" }), "moving"),
      el("span", {}, el("span", { class: "dot parked" }), "parked"),
      el("span", {}, el("span", { class: "dot offline" }), "offline"));
    const rows = el("tbody", {});
    const list = el("div", { class: "table-wrap" }, el("table", { id: "vehicles" },
      el("caption", { class: "muted", text: "Your vehicles, live" }),
      el("thead", {}, el("tr", {}, ...["Vehicle", "Status", "Speed", "Charge / fuel", "Position", "Last seen"]
        .map((h) => el("th", { scope: "col", text: h })))),
      rows));
    content.append(legend, mapNode, el("h2", { text: "Vehicles" }), list);
    const map = await makeMap(mapNode);
    drawGeofences(map);
    legend.append(fenceDrawer(map));
    const byVin = new Map();
    const onChange = (p, status) => {
      let row = byVin.get(p.vin);
      if (!row) {
        row = el("tr", { "data-vin": p.vin });
        byVin.set(p.vin, row);
        const after = [...byVin.keys()].sort().indexOf(p.vin);
        const next = rows.children[after];
        rows.insertBefore(row, next || null);
      }
      row.dataset.status = status;
      row.hidden = markers.filter !== "all" && markers.filter !== status;
      const energy = p.soc !== null && p.soc !== undefined ? num(p.soc, 0, " %") : num(p.fuel, 0, " % fuel");
      const where = p.lat === null || p.lat === undefined ? "–" : `${num(p.lat, 5)}, ${num(p.lon, 5)}`;
      row.replaceChildren(
        el("td", {}, el("a", { href: "/vehicles/" + p.vin, text: p.vin })),
        el("td", { class: "status", text: status }),
        el("td", { text: num(p.speed, 0, " km/h") }),
        el("td", { text: energy }),
        el("td", { class: "position", text: where }),
        el("td", { text: when(p.ts) }));
    };
    const markers = new Markers(map, onChange);
    filter.addEventListener("change", () => markers.setFilter(filter.value));
    // every vehicle the API lists, also those that never reported a position
    try {
      const vehicles = await all("/v1/vehicles");
      markers.update(vehicles.map((v) => ({ vin: v.vin, online: v.online, ts: v.last_seen })));
    } catch (err) {
      notice(err.message);
    }
    livePositions((positions) => markers.update(positions));
  }

  function stateList(detail) {
    const s = detail.state || {};
    const value = (path) => (s[path] ? s[path].value : null);
    const locked = value(LOCKED);
    const energy = value(SOC) !== null ? num(value(SOC), 0, " %") : num(value(FUEL), 0, " % fuel");
    const pairs = [
      ["Online", detail.online ? "yes" : "no" + (detail.offline_reason ? ` (${detail.offline_reason})` : "")],
      ["Last seen", when(detail.last_seen)],
      ["Locked", locked === null ? "unknown" : locked ? "locked" : "unlocked"],
      ["Charge / fuel", energy],
      ["Speed", num(value(SPEED), 0, " km/h")],
      ["Position", value(LAT) === null ? "–" : `${num(value(LAT), 5)}, ${num(value(LON), 5)}`],
    ];
    return el("dl", { class: "kv", id: "state" },
      ...pairs.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { "data-field": k, text: v })]));
  }

  function commandWords(c) {
    let words = c.status;
    if (c.confirmation === "confirmed") words += ", confirmed";
    if (c.reason) words += ": " + (REASONS[c.reason] || c.reason.replace(/_/g, " "));
    if (c.detail) words += ` (${c.detail})`;
    return words;
  }

  // The services to offer for a vehicle: a vehicle shared with you (a grant, from
  // /v1/me) offers what the grant lists; one of your account, the common services. The API
  // decides either way: a button it refuses says why.
  function servicesFor(me, vin) {
    const grant = (me.grants || []).find((g) => g.vin === vin && !g.revoked_at);
    if (!grant) return SERVICES;
    return SERVICES.filter((s) => grant.services.includes(s));
  }

  async function vehiclePage(me) {
    const vin = decodeURIComponent(location.pathname.split("/")[2] || "");
    document.getElementById("title").textContent = "Vehicle " + vin;
    document.title = vin + " · Telematics";
    let detail;
    try {
      detail = await api("/v1/vehicles/" + encodeURIComponent(vin));
    } catch (err) {
      notice(err.message);
      return;
    }
    const statePanel = el("section", { class: "panel", "aria-labelledby": "state-h" },
      el("h2", { id: "state-h", text: "State" }), stateList(detail));
    const commandRows = el("tbody", {});
    const rowOf = new Map();
    const showCommand = (c) => {
      let row = rowOf.get(c.id || c.command_id);
      const id = c.id || c.command_id;
      if (!row) {
        row = el("tr", { "data-command": id });
        rowOf.set(id, row);
        commandRows.prepend(row);
      }
      row.replaceChildren(el("td", { text: c.type }),
        el("td", { class: "command-status status-" + c.status, text: commandWords(c) }));
    };
    const buttons = el("div", { class: "buttons" }, ...servicesFor(me, vin).map((type) =>
      el("button", { type: "button", "data-command": type, onclick: async () => {
        notice("");
        try {
          showCommand(await api(`/v1/vehicles/${encodeURIComponent(vin)}/commands`, { method: "POST", json: { type } }));
        } catch (err) {
          notice(`${type.replace(/_/g, " ")} was refused: ${err.message}`);
        }
      } }, type.replace(/_/g, " "))));
    const commandPanel = el("section", { class: "panel", "aria-labelledby": "cmd-h" },
      el("h2", { id: "cmd-h", text: "Remote services" }), buttons,
      el("div", { class: "table-wrap" }, el("table", { id: "commands" },
        el("thead", {}, el("tr", {}, el("th", { scope: "col", text: "Command" }), el("th", { scope: "col", text: "Status" }))),
        commandRows)));
    const mapNode = el("div", { id: "map", class: "map small", role: "region", "aria-label": "Map of this vehicle" });
    content.append(el("div", { class: "grid" }, statePanel, commandPanel), el("h2", { text: "Where" }), mapNode);
    try {
      const recent = await api(`/v1/vehicles/${encodeURIComponent(vin)}/commands?limit=10`);
      recent.items.slice().reverse().forEach(showCommand);
    } catch (err) {
      // listing commands may be refused (a grant for reading only): the buttons still say why
    }
    const events = new EventSource("/v1/stream");
    events.addEventListener("command.updated", async (event) => {
      const data = JSON.parse(event.data).data;
      if (data.vin !== vin) return;
      showCommand(data);
      if (data.status === "succeeded" || data.confirmation === "confirmed") {
        try {
          statePanel.replaceChild(stateList(await api("/v1/vehicles/" + encodeURIComponent(vin))),
            statePanel.querySelector("#state"));
        } catch (err) {
          notice(err.message);
        }
      }
    });
    const map = await makeMap(mapNode);
    const markers = new Markers(map, null);
    livePositions((positions) => {
      const mine = positions.filter((p) => p.vin === vin);
      markers.update(mine);
      if (mine.length && mine[0].lat !== null) map.panTo([mine[0].lat, mine[0].lon]);
    });
  }

  async function alertsPage() {
    const rows = el("tbody", {});
    const show = el("select", { id: "alert-state" },
      el("option", { value: "", text: "all" }), el("option", { value: "open", text: "open" }),
      el("option", { value: "closed", text: "closed" }));
    content.append(el("div", { class: "filters" }, el("label", { for: "alert-state" }, "Alerts", show)),
      el("div", { class: "table-wrap" }, el("table", { id: "alerts" },
        el("thead", {}, el("tr", {}, ...["Vehicle", "Alert", "Severity", "Since", "Acknowledged", ""]
          .map((h) => el("th", { scope: "col", text: h })))), rows)));
    const row = (a) => el("tr", { "data-alert": a.id },
      el("td", {}, el("a", { href: "/vehicles/" + a.vin, text: a.vin })),
      el("td", { text: a.kind + (a.key && a.key !== a.kind ? " " + a.key : "") }),
      el("td", { text: a.severity }),
      el("td", { text: when(a.start_at) + (a.end_at ? " – " + when(a.end_at) : "") }),
      el("td", { class: "acknowledged", text: a.acknowledged_at ? when(a.acknowledged_at) : "no" }),
      el("td", {}, a.acknowledged_at ? null : el("button", { type: "button", "data-ack": a.id, onclick: async (event) => {
        try {
          const done = await api(`/v1/alerts/${a.id}/acknowledge`, { method: "POST" });
          event.target.closest("tr").replaceWith(row(done));
          notice("");
        } catch (err) {
          notice("The alert was not acknowledged: " + err.message);
        }
      } }, "Acknowledge")));
    const load = async () => {
      try {
        const query = show.value ? "?state=" + show.value : "";
        const alerts = await api("/v1/alerts" + query + (query ? "&" : "?") + "limit=200");
        rows.replaceChildren(...alerts.items.map(row));
        if (!alerts.items.length) rows.append(el("tr", {}, el("td", { colspan: 6, class: "muted", text: "No alerts." })));
      } catch (err) {
        notice(err.message);
      }
    };
    show.addEventListener("change", load);
    await load();
  }

  function day(offsetDays) {
    return new Date(Date.now() + offsetDays * 86400000).toISOString().slice(0, 10);
  }

  async function reportsPage() {
    const start = el("input", { id: "start", type: "date", value: day(-6) });
    const end = el("input", { id: "end", type: "date", value: day(1) });
    const csv = el("a", { id: "csv", href: "#", download: "vehicles-report.csv" }, "Download CSV");
    const rows = el("tbody", {});
    const query = () => `start=${start.value}T00:00:00Z&end=${end.value}T00:00:00Z`;
    const load = async () => {
      csv.setAttribute("href", "/v1/reports/vehicles?format=csv&" + query());
      try {
        const report = await api("/v1/reports/vehicles?" + query());
        rows.replaceChildren(...report.totals.map((r) => el("tr", {},
          el("td", { text: r.key }), el("td", { text: r.trips }),
          el("td", { text: num(r.distance_m / 1000, 1, " km") }),
          el("td", { text: num(r.driving_ms / 60000, 0, " min") }),
          el("td", { text: num(r.energy_used_pct, 1, " %") }),
          el("td", { text: r.max_speed_kmh === null ? "–" : num(r.max_speed_kmh, 0, " km/h") }),
          el("td", { text: r.alerts }))));
        if (!report.totals.length) rows.append(el("tr", {}, el("td", { colspan: 7, class: "muted", text: "No trips in this range." })));
      } catch (err) {
        notice(err.message);
      }
    };
    start.addEventListener("change", load);
    end.addEventListener("change", load);
    content.append(el("div", { class: "filters" },
      el("label", { for: "start" }, "From", start), el("label", { for: "end" }, "Until", end), csv),
    table(["Vehicle", "Trips", "Distance", "Driving", "Energy used", "Top speed", "Alerts"], [], { id: "report" }));
    content.querySelector("#report tbody").replaceWith(rows);
    await load();
  }

  // --- start -----------------------------------------------------------------------------

  async function start() {
    if (page === "login") return loginPage();
    // no CSRF cookie: no session either (both are set and end together)
    if (!cookie("tg_csrf")) return expired();
    let me;
    try {
      me = await api("/v1/me");
    } catch (err) {
      if (err.status !== 401) notice(err.message);
      return;
    }
    document.getElementById("nav").hidden = false;
    document.getElementById("who").textContent = `${me.user.email} (${me.user.role})`;
    const logout = document.getElementById("logout");
    logout.hidden = false;
    logout.addEventListener("click", async () => {
      try {
        await api("/v1/auth/session", { method: "DELETE" });
      } finally {
        location.assign("/login");
      }
    });
    const pages = { map: mapPage, vehicle: vehiclePage, alerts: alertsPage, reports: reportsPage };
    await pages[page](me);
    stats.readyMs = performance.now();
    document.body.dataset.ready = "1";
  }

  start().catch((err) => notice(err.message || String(err)));
})();
