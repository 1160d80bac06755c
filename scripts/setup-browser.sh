#!/usr/bin/env bash
# Browser pieces of the set-up (called by scripts/setup.sh when CRYPTOMON_SETUP_BROWSER=1; idempotent):
# - Debian's `chromium` (apt-get) for the Playwright browser tests — never a browser downloaded by Playwright;
# - third-party browser JavaScript from the npm registry into static/vendor/ with its licence (no CDN).
# `--vendor-only` installs just the JavaScript (what the dashboard itself needs; no browser).
set -euo pipefail
cd "$(dirname "$0")/.."
vendor_only=0
[ "${1:-}" = "--vendor-only" ] && vendor_only=1

LWC_VERSION=${LWC_VERSION:-5.2.1}

# fonts-wqy-microhei: glyphs for CJK symbol names (Binance lists some) in screenshots.
if [ "$vendor_only" = 0 ] && { [ ! -x /usr/bin/chromium ] || [ ! -d /usr/share/fonts/truetype/wqy ]; }; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core fonts-wqy-microhei >/dev/null
  else
    echo "setup-browser: /usr/bin/chromium is missing; install Debian's chromium package (apt-get install chromium)" >&2
    exit 1
  fi
fi

vendor=static/vendor/lightweight-charts
if [ ! -f "$vendor/VERSION" ] || [ "$(cat "$vendor/VERSION")" != "$LWC_VERSION" ]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  (cd "$tmp" && npm pack --silent "lightweight-charts@$LWC_VERSION" >/dev/null && tar -xzf lightweight-charts-*.tgz)
  mkdir -p "$vendor"
  cp "$tmp/package/dist/lightweight-charts.standalone.production.js" "$vendor/"
  cp "$tmp/package/LICENSE" "$vendor/LICENSE"
  [ -f "$tmp/package/NOTICE" ] && cp "$tmp/package/NOTICE" "$vendor/NOTICE"
  echo "$LWC_VERSION" > "$vendor/VERSION"
fi
