// cryptomon dashboard: one small module speaking the realtime protocol of docs/contract.md §10 over /ws/alerts/.
// Pages say who they are with <body data-page="live|symbol|settings">; nothing here needs a build step.

import { chartPriceFormat, fmtPrice, formatPrice } from "./prices.js";

const body = document.body;
const ZONE = body.dataset.zone || "UTC";
const SIGNED_IN = body.dataset.signedIn === "1";
const CSRF = body.dataset.csrf || "";
const MAX_FEED = 200;

// --- formatting -------------------------------------------------------------------------------------------

// sv-SE formats as 2026-01-31 13:05:00, unambiguous everywhere.
const timeFormat = new Intl.DateTimeFormat("sv-SE", {
  timeZone: ZONE, year: "numeric", month: "2-digit", day: "2-digit",
  hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false,
});
const shortTime = new Intl.DateTimeFormat("en-GB", {
  timeZone: ZONE, hour: "2-digit", minute: "2-digit", hour12: false,
});
const fmtTime = (ms) => (ms == null ? "–" : timeFormat.format(new Date(ms)));
const fmtNum = (v, digits = 4) => {
  if (v == null || Number.isNaN(v)) return "–";  // unknown, never zero (docs/contract.md §7)
  const a = Math.abs(v);
  if (a >= 1e9) return (v / 1e9).toFixed(2) + "B";
  if (a >= 1e6) return (v / 1e6).toFixed(2) + "M";
  if (a >= 1e4) return (v / 1e3).toFixed(1) + "k";
  return a < 1 ? Number(v.toPrecision(digits)).toString() : Number(v.toFixed(digits)).toString();
};
const fmtPct = (v) => (v == null ? "–" : (v > 0 ? "+" : "") + v.toFixed(2) + "%");
const fmtLag = (ms) => (ms == null ? "–" : ms < 1000 ? ms + " ms" : (ms / 1000).toFixed(1) + " s");
const symbolUrl = (symbol) => "/symbols/" + encodeURIComponent(symbol) + "/";

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

function localTimes(root = document) {
  for (const node of root.querySelectorAll("time[data-ms]")) node.textContent = fmtTime(Number(node.dataset.ms));
}

// --- the socket: reconnect with backoff, resubscribe, snapshot ---------------------------------------------

class Feed {
  constructor(subscription, handlers) {
    this.subscription = subscription;
    this.handlers = handlers;
    this.attempt = 0;
    this.timer = null;
    this.connect();
  }

  connect() {
    const scheme = location.protocol === "https:" ? "wss://" : "ws://";
    this.setState("connecting…", "connecting");
    const ws = new WebSocket(scheme + location.host + (body.dataset.ws || "/ws/alerts/"));
    this.ws = ws;
    ws.onopen = () => {
      this.attempt = 0;
      this.setState("live", "open");
      ws.send(JSON.stringify({ type: "subscribe", ...this.subscription }));
      clearInterval(this.pinger);
      this.pinger = setInterval(() => ws.readyState === 1 && ws.send('{"type":"ping"}'), 25000);
    };
    ws.onmessage = (event) => {
      let message;
      try { message = JSON.parse(event.data); } catch { return; }
      // Snapshots seen by this page (one on connect, one per subscribe): the browser tests wait on it.
      if (message.type === "snapshot") body.dataset.snapshots = String(Number(body.dataset.snapshots || 0) + 1);
      if (message.type === "alerts" && !this.handlers.alerts) {
        // Several alerts ready at the same moment, oldest first (docs/contract.md §10): one `alert` each.
        for (const alert of message.alerts || []) this.handlers.alert?.({ type: "alert", alert });
        return;
      }
      const handler = this.handlers[message.type];
      if (handler) handler(message);
    };
    ws.onclose = (event) => {
      clearInterval(this.pinger);
      if (event.code === 4401) { this.setState("sign in to see the live feed", "closed"); return; }
      if (event.code === 4403) { this.setState("signed out: sign in again to see the live feed", "closed"); return; }
      if (event.code === 4429) this.setState("too many open tabs", "closed");
      // Full-jitter exponential backoff, capped at 30 s; the server sends a fresh snapshot on reconnect.
      const cap = Math.min(30000, 500 * 2 ** this.attempt++);
      const delay = Math.round(cap / 2 + Math.random() * cap / 2);
      this.setState(`reconnecting in ${Math.ceil(delay / 1000)} s`, "reconnecting");
      this.timer = setTimeout(() => this.connect(), delay);
    };
  }

  resubscribe(subscription) {
    this.subscription = subscription;
    if (this.ws && this.ws.readyState === 1) this.ws.send(JSON.stringify({ type: "subscribe", ...subscription }));
  }

  setState(text, state) {
    const conn = document.getElementById("conn");
    if (conn) { conn.textContent = text; conn.dataset.state = state; }
  }
}

function showStatus(feed) {
  const bar = document.getElementById("status");
  if (!bar) return;
  bar.classList.toggle("stale", !!feed.stale);
  bar.dataset.stale = feed.stale ? "true" : "false";
  document.getElementById("symbols-live").textContent = feed.symbols_live ?? "–";
  document.getElementById("lag").textContent = fmtLag(feed.lag_ms);
  document.getElementById("last-candle").textContent = fmtTime(feed.last_open_time);
}

// --- alerts: feed list, sound, desktop notifications -------------------------------------------------------

function alertItem(alert) {
  const li = el("li", { class: `alert dir-${alert.direction} sev-${alert.severity}`, "data-id": alert.id });
  li.append(
    el("time", { "data-ms": alert.open_time, text: fmtTime(alert.open_time) }), " ",
    el("a", { href: symbolUrl(alert.symbol), class: "symbol", text: alert.symbol }), " ",
    el("b", { class: "rule", text: alert.rule_name || alert.rule }), " ",
    el("span", { class: "price", text: fmtPrice(alert.symbol, alert.price) }),
  );
  if (alert.owner != null) li.append(" ", el("span", { class: "tag", text: "mine" }));
  if (alert.late) li.append(" ", el("span", { class: "late", title: "its candle arrived late", text: "late" }));
  if (alert.description) li.title = alert.description;
  return li;
}

class AlertList {
  constructor(list, empty) {
    this.list = list;
    this.empty = empty;
    this.alerts = new Map();
  }
  replace(alerts) {
    this.alerts = new Map(alerts.map((a) => [a.id, a]));
    this.render();
  }
  add(alert) {
    return this.addMany([alert]).length === 1;
  }
  addMany(alerts) {  // the ones not shown yet, in the order given
    const fresh = alerts.filter((alert) => !this.alerts.has(alert.id));
    for (const alert of fresh) this.alerts.set(alert.id, alert);
    if (fresh.length) this.render();
    return fresh;
  }
  render() {
    const sorted = [...this.alerts.values()].sort((a, b) => b.open_time - a.open_time || b.triggered_at - a.triggered_at);
    for (const stale of sorted.slice(MAX_FEED)) this.alerts.delete(stale.id);
    this.list.replaceChildren(...sorted.slice(0, MAX_FEED).map(alertItem));
    if (this.empty) this.empty.hidden = sorted.length > 0;
  }
}

function toggleSetting(id, key, onEnable) {
  const box = document.getElementById(id);
  if (!box) return () => false;
  box.checked = localStorage.getItem(key) === "1";
  box.addEventListener("change", async () => {
    if (box.checked && onEnable && !(await onEnable())) box.checked = false;
    localStorage.setItem(key, box.checked ? "1" : "0");
  });
  return () => box.checked;
}

let audio = null;
function beep(direction) {
  audio = audio || new AudioContext();
  const osc = audio.createOscillator();
  const gain = audio.createGain();
  osc.frequency.value = direction === "bear" ? 440 : 880;
  gain.gain.setValueAtTime(0.15, audio.currentTime);
  gain.gain.exponentialRampToValueAtTime(0.001, audio.currentTime + 0.3);
  osc.connect(gain).connect(audio.destination);
  osc.start();
  osc.stop(audio.currentTime + 0.3);
}

// --- live page: feed + market table ------------------------------------------------------------------------

const MARKET_COLUMNS = [
  ["price", (v, row) => fmtPrice(row.symbol, v)], ["change_5m", fmtPct], ["change_15m", fmtPct], ["change_1h", fmtPct],
  ["change_4h", fmtPct], ["change_8h", fmtPct], ["change_1d", fmtPct], ["volume_1h", fmtNum],
  ["volume_1d", fmtNum], ["rsi_14", (v) => (v == null ? "–" : v.toFixed(1))],
];
const HIDDEN_COLUMNS_KEY = "cryptomon.market.hidden";  // the column chooser, remembered per browser profile

// The market table at 600 symbols: one <tr> per symbol kept across updates, only changed cells written,
// rows re-ordered only when the order changed, nothing rendered while the tab is in the background (the
// latest rows are kept and drawn once it is visible again). Render times go to `window.cryptomonRenders`
// (benchmarks/bench_gateway.py --browser reads them, and drives `window.cryptomonMarket` directly).
class MarketTable {
  constructor(table, { watch, filter, watchOnly, chooser }) {
    this.table = table;
    this.tbody = table.querySelector("tbody");
    this.headers = [...table.querySelectorAll("th[data-key]")];
    this.count = document.getElementById("market-count");
    this.watch = watch;
    this.filter = filter;
    this.watchOnly = watchOnly;
    this.rows = new Map();  // symbol → latest row
    this.trs = new Map();  // symbol → its <tr>
    this.dirty = new Set();  // symbols whose cells need writing
    this.moves = new Map();  // symbol → "up"/"down": its price moved since it was last drawn
    this.order = [];  // the <tr>s in the order on screen
    this.sort = { key: "volume_1d", desc: true };
    this.pending = false;
    this.selected = null;  // the symbol with keyboard focus
    this.hiddenStyle = document.head.appendChild(el("style"));
    this.hidden = new Set(JSON.parse(localStorage.getItem(HIDDEN_COLUMNS_KEY) || "[]"));
    window.cryptomonRenders = window.cryptomonRenders || [];
    this.buildChooser(chooser);
    this.applyHidden();
    this.bind();
    document.addEventListener("visibilitychange", () => { if (!document.hidden) this.schedule(); });
  }

  update(rows) {
    for (const row of rows) {
      const old = this.rows.get(row.symbol);
      this.rows.set(row.symbol, row);
      if (!old) this.dirty.add(row.symbol);
      else if (MARKET_COLUMNS.some(([key]) => old[key] !== row[key])) {
        this.dirty.add(row.symbol);
        if (old.price != null && row.price != null && old.price !== row.price) {
          this.moves.set(row.symbol, row.price > old.price ? "up" : "down");
        }
      }
    }
    this.schedule();
  }

  schedule() {
    // requestAnimationFrame does not run in a background tab: at most one render is ever pending.
    if (this.pending || document.hidden) return;
    this.pending = true;
    requestAnimationFrame(() => this.render());
  }

  row(symbol) {
    let tr = this.trs.get(symbol);
    if (tr) return tr;
    const starred = this.watch.has(symbol);
    const star = el("button", {
      type: "button", class: "star" + (starred ? " on" : ""), "data-symbol": symbol, tabindex: "-1",
      "aria-label": `watch ${symbol}`, "aria-pressed": starred ? "true" : "false", text: starred ? "★" : "☆",
    });
    if (!SIGNED_IN) star.hidden = true;
    tr = el("tr", { "data-symbol": symbol, tabindex: "-1" },
      el("td", {}, star), el("td", { "data-key": "symbol" }, el("a", { href: symbolUrl(symbol), text: symbol, tabindex: "-1" })));
    for (const [key] of MARKET_COLUMNS) tr.append(el("td", { "data-key": key }));
    this.trs.set(symbol, tr);
    return tr;
  }

  write(symbol) {
    const tr = this.row(symbol);
    const r = this.rows.get(symbol);
    const cells = tr.children;
    MARKET_COLUMNS.forEach(([key, format], n) => {
      const td = cells[n + 2];
      const v = r[key];
      const text = format(v, r);
      if (td.textContent !== text) td.textContent = text;
      if (key.startsWith("change")) {
        const tone = v == null || v === 0 ? "" : v > 0 ? "up" : "down";
        if (td.className !== tone) td.className = tone;
      }
    });
    const move = this.moves.get(symbol);
    if (move) {  // restart the flash without a forced layout: alternate between two identical animations
      this.moves.delete(symbol);
      tr.className = `flash-${move}-${tr.className.endsWith("-a") ? "b" : "a"}`;
    }
  }


  render() {
    this.pending = false;
    if (document.hidden) return;  // drawn when the tab is visible again
    const started = performance.now();
    const { key, desc } = this.sort;
    for (const symbol of this.dirty) this.write(symbol);
    this.dirty.clear();
    const needle = this.filter.value.trim().toUpperCase();
    const watchedOnly = !!this.watchOnly?.checked;
    const shown = [];
    for (const r of this.rows.values()) {
      if ((!needle || r.symbol.toUpperCase().includes(needle)) && (!watchedOnly || this.watch.has(r.symbol))) shown.push(r);
    }
    shown.sort((a, b) => {
      const x = a[key], y = b[key];
      if (x == null && y == null) return a.symbol < b.symbol ? -1 : 1;
      if (x == null) return 1;  // unknown values sink, whatever the direction
      if (y == null) return -1;
      const order = typeof x === "string" ? x.localeCompare(y) : x - y;
      return (desc ? -order : order) || (a.symbol < b.symbol ? -1 : 1);
    });
    const order = shown.map((r) => this.trs.get(r.symbol));
    if (order.length !== this.order.length || order.some((tr, n) => tr !== this.order[n])) {
      this.tbody.replaceChildren(...order);
      this.order = order;
    }
    const count = `${shown.length} of ${this.rows.size}`;
    if (this.count.textContent !== count) this.count.textContent = count;
    for (const th of this.headers) {
      const state = th.dataset.key === key ? (desc ? "descending" : "ascending") : "none";
      if (th.getAttribute("aria-sort") !== state) th.setAttribute("aria-sort", state);
    }
    const renders = window.cryptomonRenders;
    renders.push(performance.now() - started);
    if (renders.length > 1000) renders.splice(0, renders.length - 1000);
  }

  sortBy(column) {
    this.sort.desc = this.sort.key === column ? !this.sort.desc : this.table.querySelector(`th[data-key="${column}"]`)?.dataset.type !== "text";
    this.sort.key = column;
    this.schedule();
  }

  select(tr) {
    if (!tr) return;
    this.trs.get(this.selected)?.removeAttribute("aria-selected");
    this.selected = tr.dataset.symbol;
    tr.setAttribute("aria-selected", "true");
    tr.focus();
  }

  buildChooser(chooser) {
    if (!chooser) return;
    for (const th of this.table.querySelectorAll("thead th[data-key]")) {
      const column = th.dataset.key;
      if (column === "symbol") continue;
      const box = el("input", { type: "checkbox", "data-column": column });
      box.checked = !this.hidden.has(column);
      box.addEventListener("change", () => {
        if (box.checked) this.hidden.delete(column); else this.hidden.add(column);
        localStorage.setItem(HIDDEN_COLUMNS_KEY, JSON.stringify([...this.hidden]));
        this.applyHidden();
      });
      chooser.append(el("label", {}, box, " " + th.textContent.trim()));
    }
  }

  applyHidden() {  // one style rule per hidden column: no per-cell work, new rows follow it too
    this.hiddenStyle.textContent = [...this.hidden]
      .filter((column) => /^[a-z0-9_]+$/.test(column))
      .map((column) => `#market-table [data-key="${column}"] { display:none; }`).join("\n");
  }

  bind() {
    for (const th of this.table.querySelectorAll("th[data-key]")) {
      th.tabIndex = 0;
      th.addEventListener("click", () => this.sortBy(th.dataset.key));
      th.addEventListener("keydown", (event) => {
        if (event.key === "Enter" || event.key === " ") { event.preventDefault(); this.sortBy(th.dataset.key); }
      });
    }
    this.filter.addEventListener("input", () => this.schedule());
    this.watchOnly?.addEventListener("change", () => this.schedule());
    this.tbody.addEventListener("click", async (event) => {
      const star = event.target.closest("button.star");
      if (!star) {  // anywhere else on a row: open the symbol's page
        const tr = event.target.closest("tr[data-symbol]");
        if (tr && !event.target.closest("a")) location.href = symbolUrl(tr.dataset.symbol);
        return;
      }
      const response = await fetch("/watchlist/toggle", {
        method: "POST", headers: { "X-CSRFToken": CSRF }, body: new URLSearchParams({ symbol: star.dataset.symbol }),
      });
      if (!response.ok) return;
      const result = await response.json();
      if (result.starred) this.watch.add(result.symbol); else this.watch.delete(result.symbol);
      star.classList.toggle("on", result.starred);
      star.setAttribute("aria-pressed", result.starred ? "true" : "false");
      star.textContent = result.starred ? "★" : "☆";
      this.schedule();
    });
    // Keyboard: ↑/↓ (and j/k) move along the rows, Home/End jump, Enter opens the symbol, w stars it.
    this.table.tabIndex = 0;
    this.table.addEventListener("keydown", (event) => {
      if (event.target.closest("thead")) return;
      const rows = this.order;
      if (!rows.length) return;
      const at = rows.indexOf(this.trs.get(this.selected));
      const move = { ArrowDown: 1, j: 1, ArrowUp: -1, k: -1, PageDown: 20, PageUp: -20 }[event.key];
      if (move !== undefined) {
        event.preventDefault();
        this.select(rows[Math.max(0, Math.min(rows.length - 1, at < 0 ? 0 : at + move))]);
      } else if (event.key === "Home" || event.key === "End") {
        event.preventDefault();
        this.select(rows[event.key === "Home" ? 0 : rows.length - 1]);
      } else if (event.key === "Enter" && at >= 0) {
        event.preventDefault();
        location.href = symbolUrl(this.selected);
      } else if (event.key === "w" && at >= 0 && SIGNED_IN) {
        rows[at].querySelector("button.star")?.click();
      }
    });
  }
}

function livePage() {
  const alerts = new AlertList(document.getElementById("alert-feed"), document.getElementById("feed-empty"));
  const soundOn = toggleSetting("sound-toggle", "cryptomon.sound");
  const notifyOn = toggleSetting("notify-toggle", "cryptomon.notify", async () =>
    "Notification" in window && (await Notification.requestPermission()) === "granted");
  const market = window.cryptomonMarket = new MarketTable(document.getElementById("market-table"), {
    watch: new Set(JSON.parse(document.getElementById("watchlist-data")?.textContent || "[]")),
    filter: document.getElementById("market-filter"),
    watchOnly: document.getElementById("watchlist-only"),
    chooser: document.getElementById("market-columns"),
  });
  const announce = (alert) => {
    if (soundOn()) beep(alert.direction);
    if (notifyOn() && "Notification" in window && Notification.permission === "granted") {
      new Notification(`${alert.symbol}: ${alert.rule_name}`, { body: `${alert.direction} at ${fmtPrice(alert.symbol, alert.price)}`, tag: alert.id });
    }
  };

  new Feed({ symbols: null, rules: null, market: true }, {
    snapshot: (m) => alerts.replace(m.alerts),
    alert: (m) => { if (alerts.add(m.alert)) announce(m.alert); },
    // Several alerts at once, oldest first: one list render, one sound for the newest.
    alerts: (m) => {
      const fresh = alerts.addMany(m.alerts);
      if (fresh.length) announce(fresh[fresh.length - 1]);
    },
    market: (m) => market.update(m.rows),
    status: (m) => showStatus(m.feed),
  });
}

// --- symbol page: server-aggregated candles, volume, Bollinger bands, RSI and MACD panes, alerts -----------

const UP = "#1fb86a", DOWN = "#e5484d", NEUTRAL = "#d6a93a";

function symbolPage() {
  const symbol = document.getElementById("symbol-name").dataset.symbol;
  const box = document.getElementById("chart");
  const LWC = window.LightweightCharts;
  if (!LWC) {  // static/vendor/ is installed by scripts/setup-browser.sh
    box.textContent = "The chart library is not installed: run scripts/setup-browser.sh --vendor-only.";
    return;
  }
  const decimals = box.dataset.decimals == null ? null : Number(box.dataset.decimals);
  const chart = LWC.createChart(box, {
    autoSize: true,
    layout: { background: { color: "#0f1720" }, textColor: "#c9d4df", panes: { separatorColor: "#2a3a4a" } },
    grid: { vertLines: { color: "#1c2733" }, horzLines: { color: "#1c2733" } },
    crosshair: { mode: LWC.CrosshairMode.Normal },
    timeScale: { timeVisible: true, tickMarkFormatter: (t) => shortTime.format(new Date(t * 1000)) },
    localization: { timeFormatter: (t) => fmtTime(t * 1000) },
  });
  const candles = chart.addSeries(LWC.CandlestickSeries, {
    upColor: UP, downColor: DOWN, wickUpColor: UP, wickDownColor: DOWN, borderVisible: false,
    priceFormat: chartPriceFormat(decimals, box.dataset.tickSize),
  });
  const volume = chart.addSeries(LWC.HistogramSeries, {
    priceScaleId: "volume", priceFormat: { type: "volume" }, lastValueVisible: false, priceLineVisible: false,
  });
  chart.priceScale("volume").applyOptions({ scaleMargins: { top: 0.8, bottom: 0 } });
  const band = (color) => chart.addSeries(LWC.LineSeries, {
    color, lineWidth: 1, priceLineVisible: false, lastValueVisible: false, crosshairMarkerVisible: false,
    priceFormat: chartPriceFormat(decimals, box.dataset.tickSize),
  });
  const bbUpper = band("#5b8def"), bbMiddle = band("#8892a0"), bbLower = band("#5b8def");
  const rsi = chart.addSeries(LWC.LineSeries, { color: "#b48ef0", lineWidth: 1, priceLineVisible: false }, 1);
  rsi.createPriceLine({ price: 70, color: "#6b5a8a", lineStyle: LWC.LineStyle.Dashed, axisLabelVisible: false });
  rsi.createPriceLine({ price: 30, color: "#6b5a8a", lineStyle: LWC.LineStyle.Dashed, axisLabelVisible: false });
  const macdHist = chart.addSeries(LWC.HistogramSeries, { priceLineVisible: false, lastValueVisible: false }, 2);
  const macd = chart.addSeries(LWC.LineSeries, { color: "#3fa7d6", lineWidth: 1, priceLineVisible: false }, 2);
  const macdSignal = chart.addSeries(LWC.LineSeries, { color: "#f0a35e", lineWidth: 1, priceLineVisible: false }, 2);
  const [pricePane, rsiPane, macdPane] = chart.panes();  // 60 % price and volume, 20 % each indicator
  pricePane.setStretchFactor(3);
  rsiPane?.setStretchFactor(1);
  macdPane?.setStretchFactor(1);
  const markers = LWC.createSeriesMarkers(candles, []);

  let interval = "1m";
  let bars = [];        // {open_time, open, high, low, close, quote_volume}
  let byTime = new Map();  // seconds → {bar, indicators, alerts}
  let alerts = [];
  const seconds = (ms) => ms / 1000;
  const line = (points, key) => points.filter((p) => p[key] != null).map((p) => ({ time: seconds(p.open_time), value: p[key] }));
  const intervalMs = () => ({ "1m": 1, "5m": 5, "15m": 15, "1h": 60, "4h": 240, "1d": 1440 })[interval] * 60000;
  const bucket = (ms) => Math.floor(ms / intervalMs()) * intervalMs();

  const drawMarkers = () => {
    const list = alerts.map((a) => ({
      time: seconds(bucket(a.open_time)),
      position: a.direction === "bear" ? "aboveBar" : "belowBar",
      color: a.direction === "bull" ? UP : a.direction === "bear" ? DOWN : NEUTRAL,
      shape: a.direction === "bull" ? "arrowUp" : a.direction === "bear" ? "arrowDown" : "circle",
    })).sort((x, y) => x.time - y.time);
    markers.setMarkers(list);
    box.dataset.markers = String(list.length);
  };

  const barData = (b) => ({ time: seconds(b.open_time), open: b.open, high: b.high, low: b.low, close: b.close });
  const volumeData = (b) => ({ time: seconds(b.open_time), value: b.quote_volume, color: b.close >= b.open ? "#1fb86a55" : "#e5484d55" });

  const show = (data) => {
    bars = data.bars;
    alerts = data.alerts;
    candles.setData(bars.map(barData));
    volume.setData(bars.map(volumeData));
    bbUpper.setData(line(data.indicators, "bb_upper"));
    bbMiddle.setData(line(data.indicators, "bb_middle"));
    bbLower.setData(line(data.indicators, "bb_lower"));
    rsi.setData(line(data.indicators, "rsi_14"));
    macd.setData(line(data.indicators, "macd"));
    macdSignal.setData(line(data.indicators, "macd_signal"));
    macdHist.setData(data.indicators.filter((p) => p.macd_hist != null).map((p) => ({
      time: seconds(p.open_time), value: p.macd_hist, color: p.macd_hist >= 0 ? "#1fb86a99" : "#e5484d99",
    })));
    byTime = new Map();
    for (const b of bars) byTime.set(seconds(b.open_time), { bar: b, indicators: null, alerts: [] });
    for (const p of data.indicators) { const e = byTime.get(seconds(p.open_time)); if (e) e.indicators = p; }
    for (const a of alerts) { const e = byTime.get(seconds(bucket(a.open_time))); if (e) e.alerts.push(a); }
    drawMarkers();
    const last = bars[bars.length - 1];
    box.dataset.bars = String(bars.length);
    box.dataset.interval = interval;
    box.dataset.indicators = String(data.indicators.length);
    if (last) box.dataset.priceSample = candles.priceFormatter().format(last.close);
    legend(last ? seconds(last.open_time) : null);
  };

  const fmtBarPrice = (v) => formatPrice(v, decimals);
  const legend = (time) => {
    const entry = time == null ? null : byTime.get(time);
    const ohlc = document.getElementById("legend-ohlc");
    const ind = document.getElementById("legend-indicators");
    const names = document.getElementById("legend-alerts");
    if (!entry) { ohlc.textContent = ""; ind.textContent = ""; names.textContent = ""; return; }
    const b = entry.bar;
    ohlc.textContent = `${fmtTime(b.open_time)}  O ${fmtBarPrice(b.open)}  H ${fmtBarPrice(b.high)}  L ${fmtBarPrice(b.low)}  C ${fmtBarPrice(b.close)}  Vol ${fmtNum(b.quote_volume)} USDT`;
    const i = entry.indicators;
    ind.textContent = i ? `RSI ${fmtNum(i.rsi_14, 4)}  MACD ${fmtNum(i.macd, 4)} / ${fmtNum(i.macd_signal, 4)}  BB ${fmtBarPrice(i.bb_lower)} – ${fmtBarPrice(i.bb_upper)}` : "";
    names.textContent = entry.alerts.map((a) => a.rule_name + (a.late ? " (late)" : "")).join(", ");
  };
  chart.subscribeCrosshairMove((param) => legend(param.time ?? (bars.length ? seconds(bars[bars.length - 1].open_time) : null)));
  box.timeToX = (ms) => chart.timeScale().timeToCoordinate(seconds(ms));  // for the browser tests' mouse

  let loading = null;
  const load = (fit = false) => {
    const wanted = interval;
    loading = fetch(`${box.dataset.chartUrl}?interval=${wanted}&bars=300`, { credentials: "same-origin" })
      .then((r) => (r.ok ? r.json() : null))
      .then((data) => {
        if (!data || wanted !== interval) return;
        show(data);
        applyLive();
        if (fit) chart.timeScale().fitContent();
        box.dataset.loaded = "true";
      })
      .finally(() => { loading = null; });
  };

  for (const button of document.querySelectorAll("[data-interval]")) {
    button.addEventListener("click", () => {
      interval = button.dataset.interval;
      for (const other of document.querySelectorAll("[data-interval]")) other.setAttribute("aria-pressed", String(other === button));
      box.dataset.loaded = "false";
      load(true);
    });
  }
  load(true);

  // Live: the open minute's price moves the newest bar; a new minute reloads the stored bars and indicators.
  // The newest row is kept and applied again after every load, so a row seen while loading is not lost.
  let newestMinute = null;
  let reload = null;
  let liveRow = null;
  function applyLive() {
    const row = liveRow, last = bars[bars.length - 1];
    if (!row || !last) return;
    const t = bucket(row.open_time);
    if (t < last.open_time) return;
    if (t > last.open_time) {
      bars.push({ open_time: t, open: last.close, high: row.price, low: row.price, close: row.price, quote_volume: 0 });
      byTime.set(seconds(t), { bar: bars[bars.length - 1], indicators: null, alerts: [] });
    } else {
      last.high = Math.max(last.high, row.price); last.low = Math.min(last.low, row.price); last.close = row.price;
    }
    candles.update(barData(bars[bars.length - 1]));
    box.dataset.bars = String(bars.length);
    box.dataset.lastPrice = String(row.price);
  }
  const symbolAlerts = document.getElementById("symbol-alerts");
  const onAlert = (alert) => {
    if (alert.symbol !== symbol) return;
    alerts.push(alert);
    const entry = byTime.get(seconds(bucket(alert.open_time)));
    if (entry) entry.alerts.push(alert);
    symbolAlerts.querySelector(".empty")?.remove();
    symbolAlerts.prepend(alertItem(alert));
    drawMarkers();
  };
  new Feed({ symbols: [symbol], rules: null, market: true }, {
    snapshot: () => {},
    alert: (m) => onAlert(m.alert),
    alerts: (m) => m.alerts.forEach(onAlert),
    market: (m) => {
      const row = m.rows.find((r) => r.symbol === symbol);
      if (!row || row.price == null || row.open_time == null) return;
      document.getElementById("live-price").textContent = fmtBarPrice(row.price);
      if (newestMinute != null && row.open_time > newestMinute && !reload) {
        reload = setTimeout(() => { reload = null; if (!loading) load(false); }, 1500);
      }
      newestMinute = Math.max(newestMinute ?? row.open_time, row.open_time);
      liveRow = row;
      if (!loading) applyLive();
    },
    status: (m) => showStatus(m.feed),
  });
}

// --- rule editor: the rule language's own messages as you type ---------------------------------------------

function ruleEditor() {
  const form = document.getElementById("rule-form");
  if (!form) return;
  const input = form.querySelector("textarea[name=expression]");
  const output = document.getElementById("expression-check");
  let timer = null;
  const check = async () => {
    const response = await fetch(form.dataset.checkUrl, {
      method: "POST", headers: { "X-CSRFToken": CSRF }, body: new URLSearchParams({ expression: input.value }),
    });
    if (!response.ok) return;
    const result = await response.json();
    output.textContent = result.ok ? `valid — uses ${result.metrics.join(", ")}` : result.message;
    output.className = "check " + (result.ok ? "ok" : "error");
  };
  input.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(check, 250); });
  if (input.value) check();

  const preview = document.getElementById("preview");
  document.getElementById("preview-button")?.addEventListener("click", async () => {
    preview.textContent = "running the backtest…";
    const cooldown = form.querySelector("input[name=cooldown_seconds]")?.value || "300";
    const response = await fetch(form.dataset.previewUrl, {
      method: "POST", headers: { "X-CSRFToken": CSRF },
      body: new URLSearchParams({ expression: input.value, cooldown_seconds: cooldown }),
    });
    const result = response.ok || response.status === 400 || response.status === 429 ? await response.json() : { ok: false, message: `error ${response.status}` };
    preview.className = "preview " + (result.ok ? "ok" : "error");
    if (!result.ok) { preview.textContent = result.message; return; }
    const symbols = Object.entries(result.by_symbol).sort((a, b) => b[1] - a[1]);
    preview.replaceChildren(
      el("p", { text: `${result.alerts} alert${result.alerts === 1 ? "" : "s"} on ${symbols.length} of ${result.symbols_checked} symbols checked (${result.symbols_stored} stored)` }),
      el("ul", {}, ...symbols.slice(0, 10).map(([s, n]) => el("li", { text: `${s}: ${n}` }))),
    );
    if (result.truncated) {
      const cut = { symbols: `the first ${result.limits.symbols} symbols`, minutes: `the newest ${result.limits.minutes} minutes of each`, seconds: `what ${result.limits.seconds} s allowed` };
      preview.append(el("p", { text: `Partial: ${result.truncated_by.map((r) => cut[r]).join(", ")} (${result.minutes_replayed} minutes replayed).` }));
    }
  });
}

localTimes();
if (body.dataset.page === "live") livePage();
if (body.dataset.page === "symbol") symbolPage();
if (body.dataset.page === "settings") ruleEditor();
