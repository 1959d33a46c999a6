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

  // --- charts: plain SVG (docs/decisions/0025-web-dashboard-rest.md) -----------------------

  const SVG = "http://www.w3.org/2000/svg";

  function svg(tag, attrs, ...children) {
    const node = document.createElementNS(SVG, tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (key === "text") node.textContent = value;
      else node.setAttribute(key, value);
    }
    for (const child of children) if (child) node.append(child);
    return node;
  }

  // A line chart of [ts, value] pairs over [start, end): at most two points (the lowest
  // and the highest) per horizontal pixel, so a day of 1 Hz samples draws as fast as a
  // minute's. Its label says the range in words for screen readers.
  function lineChart(id, label, unit, points, start, end) {
    const W = 640, H = 170, left = 70, right = 8, top = 10, bottom = 22;
    const values = points.map((p) => p[1]);
    const lo = values.length ? Math.min(0, ...values) : 0;
    const hi = values.length ? Math.max(lo + 1, ...values) : 1;
    const x = (ts) => left + ((ts - start) / (end - start)) * (W - left - right);
    const y = (v) => top + (1 - (v - lo) / (hi - lo)) * (H - top - bottom);
    const buckets = new Map();
    for (const [ts, v] of points) {
      const b = Math.round(x(ts));
      const seen = buckets.get(b);
      if (!seen) buckets.set(b, [v, v, ts]);
      else { seen[0] = Math.min(seen[0], v); seen[1] = Math.max(seen[1], v); }
    }
    const coords = [];
    for (const [b, [min, max]] of [...buckets.entries()].sort((a, b2) => a[0] - b2[0])) {
      coords.push(`${b},${y(max).toFixed(1)}`);
      if (min !== max) coords.push(`${b},${y(min).toFixed(1)}`);
    }
    const words = values.length
      ? `${label} from ${when(start)} to ${when(end)}: ${values.length} samples, lowest ${num(Math.min(...values), 0, unit)}, highest ${num(Math.max(...values), 0, unit)}`
      : `${label}: no samples from ${when(start)} to ${when(end)}`;
    const time = (ts) => new Date(ts).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    return el("figure", { class: "chart" },
      el("figcaption", { text: label }),
      svg("svg", { id, class: "chart", viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": words,
        "data-points": String(values.length) },
        svg("line", { class: "axis", x1: left, y1: H - bottom, x2: W - right, y2: H - bottom }),
        svg("line", { class: "axis", x1: left, y1: top, x2: left, y2: H - bottom }),
        svg("text", { class: "tick", x: left - 4, y: top + 8, "text-anchor": "end", text: num(hi, 0, unit) }),
        svg("text", { class: "tick", x: left - 4, y: H - bottom, "text-anchor": "end", text: num(lo, 0, unit) }),
        svg("text", { class: "tick", x: left, y: H - 6, text: time(start) }),
        svg("text", { class: "tick", x: W - right, y: H - 6, "text-anchor": "end", text: time(end) }),
        coords.length ? svg("polyline", { class: "series", points: coords.join(" ") }) : null));
  }

  // --- maps ------------------------------------------------------------------------------

  // the API's online: true, false, or null for a vehicle it never heard a status from;
  // one that never reported anything at all (no time) is "never seen", not "offline"
  const NEVER_SEEN = "never seen";

  function statusOf(p) {
    if (p.online === true) return p.speed && p.speed > 1 ? "moving" : "parked";
    if (p.online === false) return "offline";
    return p.ts ? "offline" : NEVER_SEEN; // the feed's ts is 0 for one that never reported
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

  // A tooltip's content as an element holding text: a name someone typed is never markup.
  function plainTip(text) {
    const span = document.createElement("span");
    span.textContent = text;
    return span;
  }

  // Geofences on the map: drawn (click each corner), selected (click one) to rename,
  // reshape (click its new corners) or delete. The API decides who may (a fleet manager;
  // a viewer is refused in words), through POST, PUT and DELETE /v1/geofences.
  function fenceEditor(map) {
    const layers = new Map();
    let corners = [];
    let outline = null;
    let reshaping = null; // the fence whose corners are being drawn again (null: a new one)
    let selected = null;
    const name = el("input", { id: "fence-name", type: "text", maxlength: "100", placeholder: "Depot" });
    const hint = el("span", { class: "muted", id: "fence-hint" });
    const save = el("button", { type: "button", id: "fence-save", disabled: true }, "Save geofence");
    const cancel = el("button", { type: "button", id: "fence-cancel" }, "Cancel");
    const editor = el("div", { class: "filters", id: "fence-editor", hidden: true },
      el("label", { for: "fence-name" }, "Name", name), save, cancel, hint);
    const start = el("button", { type: "button", id: "fence-draw" }, "Draw a geofence");
    const selName = el("input", { id: "fence-edit-name", type: "text", maxlength: "100" });
    const rename = el("button", { type: "button", id: "fence-rename" }, "Save name");
    const reshape = el("button", { type: "button", id: "fence-reshape" }, "Draw its shape again");
    const remove = el("button", { type: "button", id: "fence-delete", class: "danger" }, "Delete");
    const close = el("button", { type: "button", id: "fence-close" }, "Close");
    const panel = el("div", { class: "filters", id: "fence-selected", hidden: true },
      el("label", { for: "fence-edit-name" }, "Selected geofence", selName), rename, reshape, remove, close);

    const show = (fence) => {
      const old = layers.get(fence.id);
      if (old) old.remove();
      const style = { color: colour("parked"), weight: 2, fillOpacity: 0.08, className: "geofence" };
      // a circular fence (a Point with its radius) as a circle, not as a pin
      const pointToLayer = (feature, latlng) => L.circle(latlng, Object.assign({ radius: feature.properties.radius_m || 50 }, style));
      const layer = L.geoJSON(fence, { style, pointToLayer }).bindTooltip(plainTip(fence.properties.name || "geofence " + fence.id));
      layer.on("click", () => {
        if (!document.body.dataset.drawing) select(fence);
      });
      layer.addTo(map);
      layer.eachLayer((part) => {
        const node = part.getElement && part.getElement();
        if (node) node.dataset.fence = fence.id;
      });
      layers.set(fence.id, layer);
    };
    const select = (fence) => {
      selected = fence;
      selName.value = fence.properties.name || "";
      panel.hidden = false;
      selName.focus();
    };
    const unselect = () => {
      selected = null;
      panel.hidden = true;
    };
    // the body of a PUT: the fence's settings as they are, with a new name or shape
    const replacement = (fence, geometry, newName) => {
      const p = fence.properties;
      const properties = { name: newName, alert_enter: p.alert_enter, alert_exit: p.alert_exit };
      if (p.speed_limit_kmh !== null && p.speed_limit_kmh !== undefined) properties.speed_limit_kmh = p.speed_limit_kmh;
      if (p.active_window) properties.active_window = p.active_window;
      if (geometry.type === "Point" && p.radius_m) properties.radius_m = p.radius_m;
      return { type: "Feature", geometry, properties };
    };
    const reset = () => {
      corners = [];
      if (outline) outline.remove();
      outline = null;
      reshaping = null;
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
    const draw = (fence) => {
      reshaping = fence;
      name.value = fence ? fence.properties.name || "" : "";
      start.hidden = true;
      editor.hidden = false;
      save.disabled = true;
      hint.textContent = "Click the map at each corner (at least 3).";
      document.body.dataset.drawing = "1";
      map.on("click", add);
    };
    start.addEventListener("click", () => {
      unselect();
      draw(null);
    });
    cancel.addEventListener("click", reset);
    save.addEventListener("click", async () => {
      const geometry = { type: "Polygon", coordinates: [corners.concat([corners[0]])] };
      const label = name.value.trim() || "Geofence";
      try {
        if (reshaping) {
          show(await api(`/v1/geofences/${reshaping.id}`, { method: "PUT", json: replacement(reshaping, geometry, label) }));
        } else {
          show(await api("/v1/geofences", { method: "POST", json: { type: "Feature", geometry, properties: { name: label } } }));
        }
        notice("Geofence saved.", "info");
        reset();
      } catch (err) {
        notice("The geofence was not saved: " + err.message);
      }
    });
    rename.addEventListener("click", async () => {
      if (!selected) return;
      try {
        const fence = await api(`/v1/geofences/${selected.id}`,
          { method: "PUT", json: replacement(selected, selected.geometry, selName.value.trim() || "Geofence") });
        show(fence);
        selected = fence;
        notice("Geofence renamed.", "info");
      } catch (err) {
        notice("The geofence was not changed: " + err.message);
      }
    });
    reshape.addEventListener("click", () => {
      if (!selected) return;
      const fence = selected;
      unselect();
      draw(fence);
    });
    remove.addEventListener("click", async () => {
      if (!selected) return;
      const fence = selected;
      if (!confirm(`Delete the geofence "${fence.properties.name}"?`)) return;
      try {
        await api(`/v1/geofences/${fence.id}`, { method: "DELETE" });
        const layer = layers.get(fence.id);
        if (layer) layer.remove();
        layers.delete(fence.id);
        unselect();
        notice("Geofence deleted.", "info");
      } catch (err) {
        notice("The geofence was not deleted: " + err.message);
      }
    });
    close.addEventListener("click", unselect);
    const load = async () => {
      let fences = [];
      try {
        fences = await all("/v1/geofences");
      } catch (err) {
        return; // not every role may list geofences; the map works without them
      }
      for (const fence of fences) show(fence);
    };
    return { node: el("div", {}, start, editor, panel), load };
  }

  // One marker per vehicle, created once and moved afterwards (never re-created).
  class Markers {
    constructor(map, onChange) {
      this.map = map;
      this.onChange = onChange;
      this.byVin = new Map();
      this.positions = new Map();
      this.filter = "all";
      this.fleet = null; // the VINs of the chosen fleet (null: every fleet)
    }

    shows(vin, status) {
      return (this.filter === "all" || this.filter === status) && (this.fleet === null || this.fleet.has(vin));
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
          // restyled only when its status or the filter changed: a fleet of 2,000 moves
          // every second, and most of them keep their colour
          const shown = this.shows(p.vin, status);
          if (marker.tgStatus !== status || marker.tgShown !== shown) {
            marker.tgStatus = status;
            marker.tgShown = shown;
            marker.setStyle({ color: colour(status), fillColor: colour(status),
              opacity: shown ? 1 : 0, fillOpacity: shown ? 0.9 : 0 });
            marker.getElement().dataset.status = status;
            marker.getElement().classList.toggle("hidden-marker", !shown);
            if (!shown) marker.closeTooltip();
          }
        }
        if (this.onChange) this.onChange(merged, status);
      }
    }

    setFilter(filter) {
      this.filter = filter;
      this.update([...this.positions.values()]);
    }

    // a fleet's VINs, or null for all: the markers are hidden and shown, never re-created,
    // and a vehicle outside the fleet stays hidden as its new positions arrive
    setFleet(vins) {
      this.fleet = vins;
      this.update([...this.positions.values()]);
    }
  }

  // measurements for gateway/bench/web.py: when the page was ready and drew its first
  // marker (ms since navigation), and the lag of each live update (sample time -> applied)
  const stats = { lags: [] };
  window.tgStats = stats;

  // The live feed's state, shown in words next to the map ("live", "reconnecting").
  function liveBadge() {
    let badge = document.getElementById("live");
    if (!badge) badge = el("span", { id: "live", class: "live muted", role: "status", text: "connecting…" });
    return badge;
  }

  function showLive(up) {
    const badge = liveBadge();
    badge.dataset.state = up ? "live" : "reconnecting";
    badge.textContent = up ? "live" : "reconnecting… (the gateway does not answer)";
  }

  // A stream that comes back by itself. The browser reconnects a dropped EventSource on
  // its own (the stream says retry: 2000) but gives up for good on an answer that is not
  // a stream (a proxy's 502 while the gateway restarts, a 401 once the session ended):
  // then this checks the session (an ended one sends the person to log in), waits a
  // little longer each time (1 s to 30 s) and opens a new one. Every new connection
  // begins with a snapshot, which updates what is shown.
  function liveSource(url, listeners) {
    let delay = 1000;
    const open = () => {
      const source = new EventSource(url);
      for (const [name, listener] of Object.entries(listeners)) source.addEventListener(name, listener);
      source.addEventListener("open", () => {
        delay = 1000;
        stats.connects = (stats.connects || 0) + 1;
        showLive(true);
      });
      source.addEventListener("error", async () => {
        showLive(false);
        if (source.readyState !== EventSource.CLOSED) return; // the browser retries
        try {
          await api("/v1/me");
        } catch (err) {
          if (err.status === 401) return; // sent to the login page
        }
        stats.reopened = (stats.reopened || 0) + 1;
        setTimeout(open, delay);
        delay = Math.min(delay * 2, 30000);
      });
    };
    open();
  }

  function livePositions(onPositions) {
    liveSource("/v1/positions/stream", {
      snapshot: (event) => {
        stats.snapshots = (stats.snapshots || 0) + 1;
        onPositions(JSON.parse(event.data));
      },
      positions: (event) => {
        const positions = JSON.parse(event.data);
        onPositions(positions);
        const now = Date.now();
        for (const p of positions) stats.lags.push(now - p.ts);
        if (stats.lags.length > 10000) stats.lags.splice(0, stats.lags.length - 10000);
      },
    });
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

  // The fleet selector of the map, filled from GET /v1/fleets: absent when the API lists
  // none (a driver's list is empty; an owner's has only the groups they made). Each choice
  // reads the fleet's vehicles again (GET /v1/fleets/{id}/vehicles), so a vehicle added
  // since shows; it only hides markers of vehicles the feed already sends.
  async function fleetFilter(legend, markers) {
    let fleets;
    try {
      fleets = await all("/v1/fleets");
    } catch (err) {
      legend.dataset.fleets = "refused";
      return; // a role that may read no fleet setup: no selector
    }
    legend.dataset.fleets = String(fleets.length);
    if (!fleets.length) return;
    const accounts = new Set(fleets.map((f) => f.account_id));
    const label = (f) => (accounts.size > 1 ? `${f.name} (account ${f.account_id})` : f.name);
    const select = el("select", { id: "fleet-filter" }, el("option", { value: "all", text: "all fleets" }),
      ...fleets.map((f) => el("option", { value: String(f.id), text: label(f) })));
    let chosen = "all";
    let asked = 0; // the newest choice wins when answers come back out of order
    select.addEventListener("change", async () => {
      const value = select.value;
      const mine = ++asked;
      if (value === "all") {
        chosen = value;
        markers.setFleet(null);
        return;
      }
      try {
        const vins = new Set((await all(`/v1/fleets/${value}/vehicles`)).map((v) => v.vin));
        if (mine !== asked) return;
        chosen = value;
        markers.setFleet(vins);
      } catch (err) {
        if (mine !== asked) return;
        select.value = chosen;
        notice("The fleet's vehicles were not read: " + err.message);
      }
    });
    legend.insertBefore(el("label", { for: "fleet-filter" }, "Fleet ", select), legend.children[1]);
  }

  async function mapPage(me) {
    const mapNode = el("div", { id: "map", class: "map", role: "region", "aria-label": "Map of your vehicles" });
    const filter = el("select", { id: "status-filter" },
      ...["all", "moving", "parked", "offline", NEVER_SEEN].map((s) => el("option", { value: s, text: s })));
    const legend = el("div", { class: "legend" },
      el("label", { for: "status-filter" }, "Show ", filter), liveBadge(),
      el("span", {}, el("span", { class: "dot moving" }), "moving"),
      el("span", {}, el("span", { class: "dot parked" }), "parked"),
      el("span", {}, el("span", { class: "dot offline" }), "offline"),
      el("span", {}, el("span", { class: "dot never" }), NEVER_SEEN));
    const rows = el("tbody", {});
    const list = el("div", { class: "table-wrap" }, el("table", { id: "vehicles" },
      el("caption", { class: "muted", text: "Your vehicles, live" }),
      el("thead", {}, el("tr", {}, ...["Vehicle", "Status", "Speed", "Charge / fuel", "Position", "Last seen"]
        .map((h) => el("th", { scope: "col", text: h })))),
      rows));
    content.append(legend, mapNode, el("h2", { text: "Vehicles" }), list);
    const map = await makeMap(mapNode);
    const fences = fenceEditor(map);
    legend.append(fences.node);
    fences.load();
    // one row per vehicle, its cells made once and their text set when it changes; new
    // rows are put in VIN order once per batch (a snapshot brings thousands at once)
    const byVin = new Map();
    let unsorted = false;
    const text = (cell, value) => {
      if (cell.textContent !== value) cell.textContent = value;
    };
    const onChange = (p, status) => {
      let row = byVin.get(p.vin);
      if (!row) {
        row = el("tr", { "data-vin": p.vin },
          el("td", {}, el("a", { href: "/vehicles/" + p.vin, text: p.vin })),
          el("td", { class: "status" }), el("td"), el("td"), el("td", { class: "position" }), el("td", { class: "seen" }));
        byVin.set(p.vin, row);
        rows.append(row);
        unsorted = true;
      }
      if (row.dataset.status !== status) row.dataset.status = status;
      row.hidden = !markers.shows(p.vin, status);
      const energy = p.soc !== null && p.soc !== undefined ? num(p.soc, 0, " %") : num(p.fuel, 0, " % fuel");
      const where = p.lat === null || p.lat === undefined ? "–" : `${num(p.lat, 5)}, ${num(p.lon, 5)}`;
      const cells = row.children;
      text(cells[1], status);
      text(cells[2], num(p.speed, 0, " km/h"));
      text(cells[3], energy);
      text(cells[4], where);
      text(cells[5], when(p.ts));
    };
    const markers = new Markers(map, onChange);
    const update = (positions) => {
      markers.update(positions);
      if (unsorted) {
        unsorted = false;
        rows.append(...[...byVin.keys()].sort().map((vin) => byVin.get(vin)));
      }
    };
    filter.addEventListener("change", () => markers.setFilter(filter.value));
    fleetFilter(legend, markers);
    livePositions(update);
    // the feed's snapshot lists every vehicle you see, also those that never reported;
    // an administrator's lists those the store knows, so the registry adds the others
    if (me.user.role === "admin") {
      try {
        const vehicles = await all("/v1/vehicles");
        update(vehicles.filter((v) => !markers.positions.has(v.vin))
          .map((v) => ({ vin: v.vin, online: v.online, ts: v.last_seen })));
      } catch (err) {
        notice(err.message);
      }
    }
  }

  function onlineWords(detail) {
    if (detail.online === true) return "yes";
    if (detail.online === false) return "no" + (detail.offline_reason ? ` (${detail.offline_reason})` : "");
    // null: no status message yet; never reported at all is "never seen"
    return detail.reported ? "not known (no status message yet)" : NEVER_SEEN;
  }

  function stateList(detail) {
    const s = detail.state || {};
    const value = (path) => (s[path] ? s[path].value : null);
    const locked = value(LOCKED);
    const energy = value(SOC) !== null ? num(value(SOC), 0, " %") : num(value(FUEL), 0, " % fuel");
    const pairs = [
      ["Online", onlineWords(detail)],
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
    content.append(el("div", { class: "grid" }, statePanel, commandPanel),
      el("h2", { text: "Where" }, " ", liveBadge()), mapNode);
    try {
      const recent = await api(`/v1/vehicles/${encodeURIComponent(vin)}/commands?limit=10`);
      recent.items.slice().reverse().forEach(showCommand);
    } catch (err) {
      // listing commands may be refused (a grant for reading only): the buttons still say why
    }
    liveSource("/v1/stream", { "command.updated": async (event) => {
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
    } });
    const map = await makeMap(mapNode);
    await historySection(vin, map);
    await vehicleAlerts(vin);
    const markers = new Markers(map, null);
    livePositions((positions) => {
      const mine = positions.filter((p) => p.vin === vin);
      markers.update(mine);
      if (!mine.length) return;
      if (mine[0].lat !== null) map.panTo([mine[0].lat, mine[0].lon]);
      // online or not, live: the feed sends the vehicle again when its status turns
      const online = statePanel.querySelector("dd[data-field='Online']");
      if (mine[0].online === true) online.textContent = "yes";
      else if (mine[0].online === false && online.textContent === "yes") online.textContent = "no";
      statePanel.dataset.online = mine[0].online === false ? "no" : "yes";
    });
  }

  const RANGES = [["15 min", 15], ["1 hour", 60], ["6 hours", 360], ["24 hours", 1440]];
  const HISTORY_PAGES = 6; // at most 60,000 samples per range (1 Hz: 16 hours)

  // The vehicle's speed and charge over a chosen range, its trail and trips on the map.
  async function historySection(vin, map) {
    const range = el("select", { id: "range" },
      ...RANGES.map(([label, minutes]) => el("option", { value: String(minutes), text: label })));
    range.value = "60";
    const charts = el("div", { class: "charts", id: "charts" });
    const tripRows = el("tbody", {});
    const summary = el("p", { class: "muted", id: "history-summary" });
    content.append(el("h2", { text: "History" }),
      el("div", { class: "filters" }, el("label", { for: "range" }, "Range", range), summary), charts,
      el("h2", { text: "Trips" }),
      el("div", { class: "table-wrap" }, el("table", { id: "trips" },
        el("thead", {}, el("tr", {}, ...["Started", "Ended", "Distance", "Top speed", "Ended by"]
          .map((h) => el("th", { scope: "col", text: h })))), tripRows)));
    const layer = L.layerGroup().addTo(map);
    const load = async () => {
      const end = Date.now();
      const start = end - Number(range.value) * 60000;
      const signals = [SPEED, SOC, FUEL, LAT, LON].join(",");
      const points = [];
      let cursor = null;
      let more = false;
      try {
        for (let i = 0; i < HISTORY_PAGES; i++) {
          const page = await api(`/v1/vehicles/${encodeURIComponent(vin)}/history?signals=${encodeURIComponent(signals)}` +
            `&start=${start}&end=${end}&limit=10000` + (cursor ? "&cursor=" + encodeURIComponent(cursor) : ""));
          points.push(...page.items);
          cursor = page.next;
          more = Boolean(cursor);
          if (!cursor) break;
        }
      } catch (err) {
        notice("The history was not read: " + err.message);
        return;
      }
      const series = (path) => points.filter((p) => typeof p.values[path] === "number").map((p) => [p.ts, p.values[path]]);
      const soc = series(SOC);
      const energy = soc.length ? ["Charge", soc] : ["Fuel", series(FUEL)];
      charts.replaceChildren(lineChart("chart-speed", "Speed", " km/h", series(SPEED), start, end),
        lineChart("chart-energy", energy[0], " %", energy[1], start, end));
      summary.textContent = `${points.length} samples` + (more ? " (the newest ones are not shown: choose a shorter range)" : "");
      // the trail of the range, and each trip on top of it
      const track = points.filter((p) => typeof p.values[LAT] === "number" && typeof p.values[LON] === "number")
        .map((p) => [p.ts, p.values[LAT], p.values[LON]]);
      layer.clearLayers();
      if (track.length > 1) {
        L.polyline(track.map((t) => [t[1], t[2]]), { className: "trail", weight: 2, interactive: false }).addTo(layer);
      }
      let trips = [], running = null;
      try {
        const page = await api(`/v1/trips?vin=${encodeURIComponent(vin)}&start=${start}&end=${end}&limit=100`);
        trips = page.items;
        running = page.in_progress || null; // the trip under way: not stored yet
      } catch (err) {
        trips = []; // a grant without trips: the charts still show
      }
      const maxSpeed = (t) => t.max_speed_kmh === null ? "–" : num(t.max_speed_kmh, 0, " km/h");
      tripRows.replaceChildren(...trips.map((t) => el("tr", { "data-trip": t.id },
        el("td", { text: when(t.start_at) }), el("td", { text: when(t.end_at) }),
        el("td", { text: num(t.distance_m / 1000, 1, " km") }),
        el("td", { text: maxSpeed(t) }),
        el("td", { text: t.ended_by.replace(/_/g, " ") }))));
      if (running) {
        tripRows.prepend(el("tr", { "data-trip": "in-progress", class: "in-progress" },
          el("td", { text: when(running.start_at) }),
          el("td", { text: `in progress, ${running.duration_ms < 60000 ? num(running.duration_ms / 1000, 0, " s")
            : num(running.duration_ms / 60000, 0, " min")} so far` }),
          el("td", { text: num(running.distance_m / 1000, 1, " km") + " so far" }),
          el("td", { text: maxSpeed(running) }),
          el("td", { text: "in progress" })));
      }
      if (!trips.length && !running) tripRows.append(el("tr", {}, el("td", { colspan: 5, class: "muted", text: "No trips started in this range." })));
      for (const t of trips) {
        const path = track.filter((p) => p[0] >= t.start_at && p[0] <= t.end_at).map((p) => [p[1], p[2]]);
        if (path.length > 1) {
          const line = L.polyline(path, { className: "trip", weight: 4 }).bindTooltip(
            plainTip(`Trip ${when(t.start_at)} – ${when(t.end_at)}, ${num(t.distance_m / 1000, 1, " km")}`)).addTo(layer);
          line.getElement().dataset.trip = t.id;
        }
      }
      document.body.dataset.history = range.value;
    };
    range.addEventListener("change", load);
    await load();
  }

  async function vehicleAlerts(vin) {
    const rows = el("tbody", {});
    content.append(el("h2", { text: "Alerts" }), el("div", { class: "table-wrap" }, el("table", { id: "vehicle-alerts" },
      el("thead", {}, el("tr", {}, ...["Alert", "Severity", "Since", "Acknowledged"]
        .map((h) => el("th", { scope: "col", text: h })))), rows)));
    try {
      const alerts = (await api(`/v1/alerts?vin=${encodeURIComponent(vin)}&limit=20`)).items;
      rows.replaceChildren(...alerts.map((a) => el("tr", { "data-alert": a.id },
        el("td", { text: a.kind + (a.key && a.key !== a.kind ? " " + a.key : "") }),
        el("td", { text: a.severity }),
        el("td", { text: when(a.start_at) + (a.end_at ? " – " + when(a.end_at) : "") }),
        el("td", { text: a.acknowledged_at ? when(a.acknowledged_at) : "no" }))));
      if (!alerts.length) rows.append(el("tr", {}, el("td", { colspan: 4, class: "muted", text: "No alerts." })));
    } catch (err) {
      rows.append(el("tr", {}, el("td", { colspan: 4, class: "muted", text: "Alerts: " + err.message })));
    }
  }

  async function alertsPage() {
    const rows = el("tbody", {});
    const show = el("select", { id: "alert-state" },
      el("option", { value: "", text: "all" }), el("option", { value: "open", text: "open" }),
      el("option", { value: "closed", text: "closed" }),
      el("option", { value: "unacknowledged", text: "not acknowledged" }));
    // every alert the table shows that nobody has acknowledged, in one request
    const ackAll = el("button", { type: "button", id: "ack-all", onclick: async () => {
      const ids = [...rows.querySelectorAll("button[data-ack]")].map((b) => Number(b.dataset.ack));
      if (!ids.length) return;
      ackAll.disabled = true;
      try {
        const done = await api("/v1/alerts/acknowledge", { method: "POST", json: { ids } });
        notice(`${done.acknowledged.length} alerts acknowledged.`, "info");
        await load();
      } catch (err) {
        notice("The alerts were not acknowledged: " + err.message);
      } finally {
        ackAll.disabled = false;
      }
    } }, "Acknowledge all shown");
    content.append(el("div", { class: "filters" }, el("label", { for: "alert-state" }, "Alerts", show), ackAll),
      el("div", { class: "table-wrap" }, el("table", { id: "alerts" },
        el("thead", {}, el("tr", {}, ...["Vehicle", "Alert", "Severity", "Since", "Acknowledged", ""]
          .map((h) => el("th", { scope: "col", text: h })))), rows)));
    const row = (a) => el("tr", { "data-alert": a.id },
      el("td", {}, el("a", { href: "/vehicles/" + a.vin, text: a.vin })),
      el("td", { text: a.kind + (a.detail && a.detail.name ? " " + a.detail.name // a geofence's
        : a.key && a.key !== a.kind ? " " + a.key : "") }),
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
        const query = show.value === "unacknowledged" ? "?acknowledged=false"
          : show.value ? "?state=" + show.value : "";
        const alerts = await api("/v1/alerts" + query + (query ? "&" : "?") + "limit=200");
        rows.replaceChildren(...alerts.items.map(row));
        if (!alerts.items.length) rows.append(el("tr", {}, el("td", { colspan: 6, class: "muted", text: "No alerts." })));
        ackAll.disabled = !rows.querySelector("button[data-ack]");
      } catch (err) {
        notice(err.message);
      }
    };
    show.addEventListener("change", load);
    await load();
  }

  // Fleet commands: one command to every vehicle of a fleet (POST /v1/command-jobs), and
  // each job's progress, live: the event stream's command.updated events of its commands
  // and its command_job.finished read the job again (at most every 300 ms each).
  async function jobsPage() {
    const type = el("select", { id: "job-type" }, ...SERVICES.map((t) => el("option", { value: t, text: t.replace(/_/g, " ") })));
    const fleet = el("select", { id: "job-fleet" });
    const send = el("button", { type: "button", id: "job-send" }, "Send to the fleet");
    const rows = el("tbody", {});
    content.append(el("div", { class: "filters" },
      el("label", { for: "job-type" }, "Command", type), el("label", { for: "job-fleet" }, "Fleet", fleet), send, liveBadge()),
    el("div", { class: "table-wrap" }, el("table", { id: "jobs" },
      el("thead", {}, el("tr", {}, ...["Job", "Command", "Vehicles", "Status", "Progress", "Started"]
        .map((h) => el("th", { scope: "col", text: h })))), rows)));
    let fleets = [];
    try {
      fleets = await all("/v1/fleets");
    } catch (err) {
      notice(err.message);
    }
    fleet.replaceChildren(...fleets.map((f) => el("option", { value: String(f.id), text: f.name })));
    if (!fleets.length) {
      send.disabled = true;
      fleet.append(el("option", { value: "", text: "no fleets" }));
    }
    const byId = new Map();
    const showJob = (job) => {
      let row = byId.get(job.id);
      if (!row) {
        row = el("tr", { "data-job": job.id });
        byId.set(job.id, row);
        const newer = [...rows.children].find((r) => Number(r.dataset.job) < job.id);
        rows.insertBefore(row, newer || null);
      }
      const counts = Object.entries(job.counts || {}).filter(([, n]) => n > 0)
        .map(([status, n]) => `${status.replace(/_/g, " ")} ${n}`).join(" · ");
      row.dataset.status = job.status;
      row.replaceChildren(el("td", { text: "#" + job.id }), el("td", { text: job.type.replace(/_/g, " ") }),
        el("td", { text: String(job.total) }),
        el("td", { class: "job-status", text: job.cancelled_at ? "cancelled" : job.status }),
        el("td", { class: "job-progress", text: counts || "–" }),
        el("td", { text: when(job.created_at) }));
    };
    const pending = new Set();
    const refresh = (id) => {
      if (pending.has(id)) return;
      pending.add(id);
      setTimeout(async () => {
        pending.delete(id);
        try {
          showJob(await api(`/v1/command-jobs/${id}`));
        } catch (err) {
          notice(err.message);
        }
      }, 300);
    };
    send.addEventListener("click", async () => {
      notice("");
      try {
        const job = await api("/v1/command-jobs", { method: "POST", json: { type: type.value, fleet_id: Number(fleet.value) } });
        showJob(job);
        const refused = (job.refusals || []).map((r) => `${r.vin}: ${(REASONS[r.reason] || r.reason).replace(/_/g, " ")}`);
        notice(`Job #${job.id} sent to ${job.total} vehicle(s)` + (refused.length ? `; refused: ${refused.join(", ")}` : "") + ".", "info");
      } catch (err) {
        notice(`${type.value.replace(/_/g, " ")} was refused: ${err.message}`);
      }
    });
    try {
      for (const job of (await api("/v1/command-jobs?limit=20")).items.reverse()) showJob(job);
    } catch (err) {
      notice(err.message);
    }
    const fromStream = (event) => {
      const data = JSON.parse(event.data).data;
      if (data && data.job_id && byId.has(data.job_id)) refresh(data.job_id);
    };
    liveSource("/v1/stream", { "command.updated": fromStream, "command_job.finished": fromStream });
  }

  // The input the gateway refused: an administrator sees all of it, a fleet manager the
  // entries about their own vehicles (the API scopes it; anyone else is refused in words).
  async function quarantinePage() {
    const vin = el("input", { id: "q-vin", type: "text", maxlength: "17", placeholder: "all vehicles" });
    const rows = el("tbody", {});
    const form = el("form", { class: "filters", onsubmit: (event) => { event.preventDefault(); load(); } },
      el("label", { for: "q-vin" }, "Vehicle", vin), el("button", { type: "submit", id: "q-load" }, "Show"));
    content.append(form, el("div", { class: "table-wrap" }, el("table", { id: "quarantine" },
      el("thead", {}, el("tr", {}, ...["Received", "Vehicle", "Reason", "Detail", "Payload"]
        .map((h) => el("th", { scope: "col", text: h })))), rows)));
    const load = async () => {
      const filter = vin.value.trim() ? "&vin=" + encodeURIComponent(vin.value.trim()) : "";
      try {
        const page = await api("/v1/quarantine?limit=100" + filter);
        rows.replaceChildren(...page.items.map((q) => el("tr", { "data-entry": q.id, "data-vin": q.vin || "" },
          el("td", { text: when(q.received_at) }),
          el("td", { text: q.vin || "–" }),
          el("td", { class: "reason", text: q.reason.replace(/_/g, " ") + (q.signal ? ` (${q.signal})` : "") }),
          el("td", { text: q.detail }),
          el("td", {}, el("code", { text: q.payload_text.slice(0, 160) + (q.payload_text.length > 160 || q.payload_truncated ? " …" : "") })))));
        if (!page.items.length) rows.append(el("tr", {}, el("td", { colspan: 5, class: "muted", text: "Nothing was refused." })));
      } catch (err) {
        notice(err.message);
      }
    };
    await load();
  }

  // Prometheus text: name{labels} value -> [{name, labels, value}]
  function parseMetrics(text) {
    const out = [];
    for (const line of text.split("\n")) {
      const m = /^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)/.exec(line);
      if (m) out.push({ name: m[1], labels: m[2] || "", value: Number(m[3]) });
    }
    return out;
  }

  // An administrator's view of the installation: each component's health (GET /healthz),
  // the ingest rate (two reads of GET /metrics, 5 s apart), the quarantine by reason and
  // the vehicles online.
  async function healthPage(me) {
    if (me.user.role !== "admin") {
      notice("The health page is for administrators.");
      return;
    }
    const components = el("tbody", {});
    const figures = el("dl", { class: "kv", id: "figures" });
    const reasons = el("tbody", {});
    content.append(el("div", { class: "grid" },
      el("section", { class: "panel", "aria-labelledby": "ingest-h" }, el("h2", { id: "ingest-h", text: "Ingest" }), figures),
      el("section", { class: "panel", "aria-labelledby": "q-h" }, el("h2", { id: "q-h", text: "Quarantine" },
        " ", el("a", { href: "/quarantine", text: "entries" })),
        el("table", { id: "reasons" }, el("thead", {}, el("tr", {}, el("th", { scope: "col", text: "Reason" }), el("th", { scope: "col", text: "Refused" }))), reasons))),
    el("h2", { text: "Components" }),
    el("div", { class: "table-wrap" }, el("table", { id: "components" },
      el("thead", {}, el("tr", {}, ...["Component", "Status", "Detail"].map((h) => el("th", { scope: "col", text: h })))), components)));
    let last = null;
    const figure = (key, value) => [el("dt", { text: key }), el("dd", { "data-figure": key, text: value })];
    const read = async () => {
      try {
        const health = await (await fetch("/healthz", { credentials: "same-origin" })).json();
        document.body.dataset.health = health.status;
        components.replaceChildren(...Object.entries(health.components).map(([name, c]) =>
          el("tr", { "data-component": name }, el("td", { text: name }),
            el("td", { class: "status-" + c.status, text: c.status + (c.required ? "" : " (optional)") }),
            el("td", { text: c.detail }))));
        const response = await fetch("/metrics", { credentials: "same-origin" });
        if (!response.ok) throw new Error("The metrics were not read (" + response.status + ").");
        const metrics = parseMetrics(await response.text());
        const total = (name) => metrics.filter((m) => m.name === name).reduce((sum, m) => sum + m.value, 0);
        const now = { at: Date.now(), samples: total("telematics_samples_stored_total"),
          messages: total("telematics_messages_received_total") };
        const rate = (key) => (last && now.at > last.at ? num(((now[key] - last[key]) * 1000) / (now.at - last.at), 1, "/s") : "measuring…");
        figures.replaceChildren(
          ...figure("Samples stored", rate("samples")),
          ...figure("Messages received", rate("messages")),
          ...figure("Samples in all", String(now.samples)),
          ...figure("Vehicles online", `${total("telematics_vehicles_online")} of ${total("telematics_vehicles")}`),
          ...figure("Overall", health.status));
        if (last) document.body.dataset.rate = "1";
        last = now;
        const refused = metrics.filter((m) => m.name === "telematics_quarantined_total" && m.value > 0);
        reasons.replaceChildren(...refused.map((m) => el("tr", {},
          el("td", { text: (/reason="([^"]*)"/.exec(m.labels) || [, "?"])[1].replace(/_/g, " ") }),
          el("td", { "data-reason": (/reason="([^"]*)"/.exec(m.labels) || [, "?"])[1], text: String(m.value) }))));
        if (!refused.length) reasons.append(el("tr", {}, el("td", { colspan: 2, class: "muted", text: "Nothing refused." })));
      } catch (err) {
        notice(err.message || String(err));
      }
    };
    await read();
    setInterval(read, 5000);
  }

  // An owner's drivers (users of their account, role driver) and whom each of their
  // vehicles is shared with (grants: the services a driver may use). The API decides:
  // a vehicle someone else shared with you lists no grants (it is not yours to share).
  async function sharingPage(me) {
    const driverRows = el("tbody", {});
    const name = el("input", { id: "driver-name", type: "text", maxlength: "200", required: true });
    const email = el("input", { id: "driver-email", type: "email", maxlength: "320", required: true });
    const addDriver = el("form", { class: "filters", id: "driver-form", onsubmit: async (event) => {
      event.preventDefault();
      try {
        const made = await api("/v1/users", { method: "POST", json: { name: name.value.trim(), email: email.value.trim(), role: "driver" } });
        await load();
        notice(`Driver ${made.email} added. Their password, shown only now: ${made.password}`, "info");
        name.value = "";
        email.value = "";
      } catch (err) {
        notice("The driver was not added: " + err.message);
      }
    } }, el("label", { for: "driver-name" }, "Name", name), el("label", { for: "driver-email" }, "E-mail", email),
    el("button", { type: "submit", id: "driver-add" }, "Add a driver"));
    const vehicles = el("div", { id: "shared-vehicles" });
    if (me.user.role === "fleet_manager") await fleetDrivers();
    content.append(el("h2", { text: "Drivers" }), addDriver,
      el("div", { class: "table-wrap" }, el("table", { id: "drivers" },
        el("thead", {}, el("tr", {}, ...["Name", "E-mail", "Since", ""].map((h) => el("th", { scope: "col", text: h })))), driverRows)),
      el("h2", { text: "Your vehicles, shared" }), vehicles);
    let drivers = [];
    const load = async () => {
      try {
        drivers = (await all("/v1/users")).filter((u) => u.role === "driver");
      } catch (err) {
        notice(err.message);
        drivers = [];
      }
      driverRows.replaceChildren(...drivers.map((u) => el("tr", { "data-user": u.id },
        el("td", { text: u.name }), el("td", { text: u.email }), el("td", { text: when(u.created_at) }),
        el("td", {}, u.disabled ? el("span", { class: "muted", text: "disabled" }) :
          el("button", { type: "button", "data-disable": u.id, onclick: async () => {
            try {
              await api(`/v1/users/${u.id}`, { method: "PATCH", json: { disabled: true } });
              await load();
              notice(`${u.email} can no longer log in.`, "info");
            } catch (err) {
              notice("The driver was not disabled: " + err.message);
            }
          } }, "Disable")))));
      if (!drivers.length) driverRows.append(el("tr", {}, el("td", { colspan: 4, class: "muted", text: "No drivers yet." })));
      const byId = new Map(drivers.map((u) => [u.id, u]));
      const sections = [];
      // a vehicle shared with you (a grant to you, from /v1/me) is not yours to share
      const sharedWithMe = new Set((me.grants || []).filter((g) => !g.revoked_at).map((g) => g.vin));
      for (const v of await all("/v1/vehicles")) {
        if (sharedWithMe.has(v.vin)) continue;
        let grants;
        try {
          grants = await all(`/v1/vehicles/${encodeURIComponent(v.vin)}/grants`);
        } catch (err) {
          continue; // the API says it is not yours to manage
        }
        sections.push(grantsOf(v.vin, grants, byId));
      }
      vehicles.replaceChildren(...sections);
      if (!sections.length) vehicles.append(el("p", { class: "muted", text: "You have no vehicles of your own to share." }));
    };
    const grantsOf = (vin, grants, byId) => {
      const who = el("select", { id: `grant-user-${vin}` },
        ...drivers.filter((u) => !u.disabled).map((u) => el("option", { value: String(u.id), text: u.email })));
      const boxes = ["read", ...SERVICES].map((service) => el("input", { type: "checkbox", value: service,
        id: `grant-${vin}-${service}`, checked: service === "read" || service === "lock" || service === "unlock" }));
      const give = el("button", { type: "submit", "data-grant-vin": vin, disabled: !drivers.length }, "Share");
      const form = el("form", { class: "filters", onsubmit: async (event) => {
        event.preventDefault();
        const services = boxes.filter((b) => b.checked).map((b) => b.value);
        try {
          await api(`/v1/vehicles/${encodeURIComponent(vin)}/grants`, { method: "POST", json: { user_id: Number(who.value), services } });
          await load();
          notice(`${vin} is shared with ${byId.get(Number(who.value)).email}: ${services.join(", ").replace(/_/g, " ")}.`, "info");
        } catch (err) {
          notice("The vehicle was not shared: " + err.message);
        }
      } }, el("label", { for: `grant-user-${vin}` }, "Driver", who),
      el("fieldset", { class: "services" }, el("legend", { text: "May" }),
        ...boxes.map((b) => el("label", { for: b.id, class: "check" }, b, b.value.replace(/_/g, " ")))), give);
      return el("section", { class: "panel", "data-vin": vin, "aria-label": "Sharing of " + vin },
        el("h3", {}, el("a", { href: "/vehicles/" + vin, text: vin })),
        el("div", { class: "table-wrap" }, el("table", { class: "grants" },
          el("thead", {}, el("tr", {}, ...["Driver", "May", "Since", ""].map((h) => el("th", { scope: "col", text: h })))),
          el("tbody", {}, ...grants.map((g) => el("tr", { "data-grant": g.id },
            el("td", { text: byId.has(g.user_id) ? byId.get(g.user_id).email : "user " + g.user_id }),
            el("td", { class: "services", text: g.services.join(", ").replace(/_/g, " ") }),
            el("td", { text: when(g.created_at) }),
            el("td", {}, el("button", { type: "button", "data-revoke": g.id, onclick: async () => {
              try {
                await api(`/v1/vehicles/${encodeURIComponent(vin)}/grants/${g.id}`, { method: "DELETE" });
                await load();
                notice(`${vin} is no longer shared with ${byId.has(g.user_id) ? byId.get(g.user_id).email : "user " + g.user_id}.`, "info");
              } catch (err) {
                notice("The grant was not revoked: " + err.message);
              }
            } }, "Stop sharing")))),
          grants.length ? null : el("tr", {}, el("td", { colspan: 4, class: "muted", text: "Not shared." }))))),
        form);
    };
    await load();
  }

  // A fleet manager's drivers of trips and alerts (/v1/drivers), apart from the logins
  // above: who drives which vehicle from now on. Before, the page said "No drivers yet"
  // to a manager whose drivers all came from the API.
  async function fleetDrivers() {
    const rows = el("tbody", {});
    const name = el("input", { id: "fleet-driver-name", type: "text", maxlength: "200", required: true });
    const vin = el("select", { id: "fleet-driver-vin" });
    const form = el("form", { class: "filters", id: "fleet-driver-form", onsubmit: async (event) => {
      event.preventDefault();
      try {
        const made = await api("/v1/drivers", { method: "POST", json: { name: name.value.trim() } });
        if (vin.value) await api(`/v1/drivers/${made.id}/assignments`, { method: "POST", json: { vin: vin.value } });
        name.value = "";
        await load();
        notice(`${made.name} added${vin.value ? ", driving " + vin.value + " from now on" : ""}.`, "info");
      } catch (err) {
        notice("The driver was not added: " + err.message);
      }
    } }, el("label", { for: "fleet-driver-name" }, "Name", name), el("label", { for: "fleet-driver-vin" }, "Drives", vin),
    el("button", { type: "submit", id: "fleet-driver-add" }, "Add a fleet driver"));
    content.append(el("h2", { text: "Fleet drivers (named on trips, alerts and reports)" }), form,
      el("div", { class: "table-wrap" }, el("table", { id: "fleet-drivers" },
        el("thead", {}, el("tr", {}, ...["Name", "Drives", "Since"].map((h) => el("th", { scope: "col", text: h })))), rows)));
    const load = async () => {
      try {
        vin.replaceChildren(el("option", { value: "", text: "no vehicle yet" }),
          ...(await all("/v1/vehicles")).map((v) => el("option", { value: v.vin, text: v.vin })));
        const drivers = await all("/v1/drivers");
        const now = Date.now();
        const lines = [];
        for (const d of drivers) {
          const open = (await all(`/v1/drivers/${d.id}/assignments`))
            .filter((a) => a.start_at <= now && (a.end_at === null || a.end_at > now));
          lines.push(el("tr", { "data-driver": d.id }, el("td", { text: d.name }),
            el("td", { class: "drives", text: open.map((a) => a.vin).join(", ") || "–" }),
            el("td", { text: when(d.created_at) })));
        }
        rows.replaceChildren(...lines);
        if (!lines.length) rows.append(el("tr", {}, el("td", { colspan: 3, class: "muted", text: "No fleet drivers yet." })));
      } catch (err) {
        notice(err.message);
      }
    };
    await load();
  }

  // Fleets and groups (GET/POST /v1/fleets, PUT/DELETE /v1/fleets/{id}/vehicles/{vin}) and
  // the account's rule thresholds (GET/PUT /v1/accounts/{id}/rule-settings): a fleet manager
  // did both with curl only. A viewer sees them; the API refuses their changes in words.
  async function fleetsPage(me) {
    const list = el("div", { id: "fleet-list" });
    const name = el("input", { id: "fleet-name", type: "text", maxlength: "200", required: true });
    const create = el("form", { class: "filters", id: "fleet-form", onsubmit: async (event) => {
      event.preventDefault();
      try {
        const made = await api("/v1/fleets", { method: "POST", json: { name: name.value.trim() } });
        name.value = "";
        await load();
        notice(`Fleet ${made.name} created.`, "info");
      } catch (err) {
        notice("The fleet was not created: " + err.message);
      }
    } }, el("label", { for: "fleet-name" }, "Name", name), el("button", { type: "submit", id: "fleet-create" }, "Create a fleet"));
    const change = async (what, done, action) => {
      try {
        await action();
        await load();
        notice(done, "info");
      } catch (err) {
        notice(what + err.message);
      }
    };
    const load = async () => {
      const [fleets, vehicles] = [await all("/v1/fleets"), await all("/v1/vehicles")];
      const parts = [];
      for (const f of fleets) {
        const members = await all(`/v1/fleets/${f.id}/vehicles`);
        const inFleet = new Set(members.map((v) => v.vin));
        const pick = el("select", { id: `fleet-${f.id}-vin`, "aria-label": `Vehicle to add to ${f.name}` },
          ...vehicles.filter((v) => !inFleet.has(v.vin)).map((v) => el("option", { value: v.vin, text: v.label ? `${v.vin} (${v.label})` : v.vin })));
        const url = (vin) => `/v1/fleets/${f.id}/vehicles/${encodeURIComponent(vin)}`;
        parts.push(el("section", { class: "fleet", "data-fleet": f.id },
          el("h3", { text: `${f.name} (${f.kind}, ${members.length} vehicles)` }),
          el("div", { class: "table-wrap" }, el("table", {},
            el("thead", {}, el("tr", {}, el("th", { scope: "col", text: "Vehicle" }), el("th", { scope: "col", text: "" }))),
            el("tbody", {}, ...members.map((v) => el("tr", { "data-vin": v.vin }, el("td", { text: v.vin }),
              el("td", {}, el("button", { type: "button", "data-remove": v.vin, onclick: () => change("The vehicle was not removed: ",
                `${v.vin} removed from ${f.name}.`, () => api(url(v.vin), { method: "DELETE" })) }, "Remove")))),
            members.length ? null : el("tr", {}, el("td", { colspan: 2, class: "muted", text: "No vehicles yet." }))))),
          el("form", { class: "filters", onsubmit: (event) => {
            event.preventDefault();
            if (pick.value) change("The vehicle was not added: ", `${pick.value} added to ${f.name}.`, () => api(url(pick.value), { method: "PUT" }));
          } }, pick, el("button", { type: "submit", "data-add": f.id }, "Add to fleet"))));
      }
      list.replaceChildren(...parts);
      if (!parts.length) list.append(el("p", { class: "muted", text: "No fleets yet." }));
    };
    content.append(el("h2", { text: "Fleets and groups" }), create, list);
    try {
      await load();
    } catch (err) {
      notice(err.message);
    }
    if (me.account) await ruleSettings(me.account.id);
  }

  const ALERT_KINDS = ["overspeed", "geofence_enter", "geofence_exit", "geofence_exit_out_of_hours", "harsh_braking",
    "harsh_acceleration", "idling", "low_soc", "low_fuel", "fault_code", "offline", "ignition", "seq_gap"];

  // The thresholds in effect, each editable; saving sends what differs from them as the
  // account's settings (with those it had), in the form the API's GET shows.
  async function ruleSettings(accountId) {
    const url = `/v1/accounts/${accountId}/rule-settings`;
    const form = el("form", { id: "rules-form", class: "rules" });
    content.append(el("h2", { text: "Alert rules" }), form);
    const load = async () => {
      const body = await api(url);
      const rules = body.effective_rules;
      const fields = [];
      for (const [key, value] of Object.entries(rules)) {
        if (key === "enabled") continue;
        const numbers = Array.isArray(value) ? value : [value];
        fields.push(el("label", { for: `rule-${key}` }, key.replace(/_/g, " "),
          el("input", { id: `rule-${key}`, name: key, type: "text", inputmode: "decimal", value: numbers.map((n) => n === null ? "" : n).join(", "),
            "data-list": Array.isArray(value) ? "1" : null })));
      }
      const kinds = el("fieldset", { id: "rule-enabled" }, el("legend", { text: "Alerts raised" }),
        ...[...new Set([...ALERT_KINDS, ...rules.enabled])].map((k) => el("label", {},
          el("input", { type: "checkbox", name: "enabled", value: k, checked: rules.enabled.includes(k) }), " " + k.replace(/_/g, " "))));
      form.replaceChildren(...fields, kinds, el("button", { type: "submit", id: "rules-save" }, "Save the rules"));
      form.onsubmit = async (event) => {
        event.preventDefault();
        const changed = {};
        for (const input of form.querySelectorAll("input[type=text]")) {
          const parts = input.value.split(",").map((t) => t.trim());
          const parsed = parts.map((t) => t === "" ? null : Number(t));
          const value = input.dataset.list ? parsed : parsed[0];
          if (JSON.stringify(value) !== JSON.stringify(rules[input.name])) changed[input.name] = value;
        }
        const enabled = [...form.querySelectorAll("input[name=enabled]:checked")].map((c) => c.value).sort();
        if (JSON.stringify(enabled) !== JSON.stringify([...rules.enabled].sort())) changed.enabled = enabled;
        try {
          await api(url, { method: "PUT", json: { rules: { ...body.rules, ...changed }, trips: body.trips } });
          await load();
          notice(Object.keys(changed).length ? `Rules saved: ${Object.keys(changed).join(", ").replace(/_/g, " ")}.` : "Nothing changed.", "info");
        } catch (err) {
          notice("The rules were not saved: " + err.message);
        }
      };
    };
    try {
      await load();
    } catch (err) {
      notice("The rules were not read: " + err.message);
    }
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
          el("td", { text: r.name ? `${r.name} (${r.key})` : r.key }), el("td", { text: r.trips }),
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
    // a link only: the health page's data (GET /metrics) is the API's to refuse
    // links only, to keep each menu short: the API refuses what a role may not do
    document.getElementById("nav-health").hidden = me.user.role !== "admin";
    const fleetRole = ["admin", "fleet_manager", "fleet_viewer"].includes(me.user.role);
    document.getElementById("nav-jobs").hidden = !fleetRole;
    document.getElementById("nav-quarantine").hidden = !fleetRole;
    document.getElementById("nav-fleets").hidden = !fleetRole;
    document.getElementById("nav-sharing").hidden = !["owner", "fleet_manager"].includes(me.user.role);
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
    const pages = { map: mapPage, vehicle: vehiclePage, alerts: alertsPage, reports: reportsPage, jobs: jobsPage,
      quarantine: quarantinePage, health: healthPage, sharing: sharingPage, fleets: fleetsPage };
    await pages[page](me);
    stats.readyMs = performance.now();
    document.body.dataset.ready = "1";
  }

  start().catch((err) => notice(err.message || String(err)));
})();
