# Sourced by ./test: Debian's Chromium, the CJK fonts a Chinese learner's machine has (so the
# zh-CN notebook is checked as it looks there, not as missing-glyph boxes), playwright-core for
# the browser check, and the proxy JupyterHub runs for the class test (class/, pinned).
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
[ -e /usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc ] || need+=(fonts-noto-cjk)
if ((${#need[@]})); then
  echo "== installing Debian's ${need[*]} (for the JupyterLab browser check)"
  sudo_=()
  [ "$(id -u)" = 0 ] || sudo_=(sudo)
  "${sudo_[@]}" apt-get update -qq && "${sudo_[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
if [ ! -d "$repo/tests/browser/node_modules/playwright-core" ]; then
  echo "== installing playwright-core into tests/browser"
  (cd "$repo/tests/browser" && npm install --no-audit --no-fund --silent)
fi
if [ ! -x "$repo/class/node_modules/.bin/configurable-http-proxy" ]; then
  echo "== installing configurable-http-proxy into class/ (JupyterHub's proxy)"
  (cd "$repo/class" && npm ci --no-audit --no-fund --silent)
fi
