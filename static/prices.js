// Prices written with the decimals of their symbol's tick size: the browser's copy of gateway/prices.py
// (docs/dashboard.md, "Prices"). A coin priced 0.0011 with tick 0.0000001 reads 0.0011000, never "0.00".

const MAX_DECIMALS = 12;
const SIGNIFICANT_DIGITS = 6;
const MIN_DECIMALS = 2;

// symbol → decimals, as the page was rendered (json_script "price-decimals"); missing = tick size unknown.
const known = (() => {
  const node = document.getElementById("price-decimals");
  try { return node ? JSON.parse(node.textContent) : {}; } catch { return {}; }
})();

export function decimalsOf(symbol) {
  const d = known[symbol];
  return Number.isInteger(d) ? d : null;
}

export function fallbackDecimals(value) {
  if (value === 0 || !Number.isFinite(value)) return MIN_DECIMALS;
  const magnitude = Math.floor(Math.log10(Math.abs(value)));
  return Math.min(MAX_DECIMALS, Math.max(MIN_DECIMALS, SIGNIFICANT_DIGITS - 1 - magnitude));
}

// '–' when unknown (never zero), else fixed-point with the symbol's decimals (or 6 significant digits).
export function formatPrice(value, decimals) {
  if (value == null || !Number.isFinite(value)) return "–";
  if (decimals == null) {
    const [whole, fraction = ""] = value.toFixed(fallbackDecimals(value)).split(".");
    return whole + "." + fraction.replace(/0+$/, "").padEnd(MIN_DECIMALS, "0");
  }
  return value.toFixed(decimals);
}

export const fmtPrice = (symbol, value) => formatPrice(value, decimalsOf(symbol));

// Lightweight Charts' price format for a symbol: the price scale and crosshair read like the table.
export function chartPriceFormat(decimals, tickSize, sample) {
  const precision = decimals ?? fallbackDecimals(sample ?? 1);
  const minMove = tickSize ? Number(tickSize) : 10 ** -precision;
  return { type: "price", precision, minMove: minMove > 0 ? minMove : 10 ** -precision };
}
