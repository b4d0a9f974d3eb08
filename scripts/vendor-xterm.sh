#!/usr/bin/env bash
# Refreshes the xterm.js copy that `kiln serve` embeds (crates/serve/assets/vendor/) from the npm
# package pinned in tests/e2e/package.json. The browser never loads anything from elsewhere.
set -euo pipefail
cd "$(dirname "$0")/.."
(cd tests/e2e && npm ci --no-audit --no-fund)
src=tests/e2e/node_modules/@xterm/xterm
dst=crates/serve/assets/vendor
mkdir -p "$dst"
# Drop the source-map comment: the map is not shipped.
grep -v '^//# sourceMappingURL=' "$src/lib/xterm.js" > "$dst/xterm.js"
cp "$src/css/xterm.css" "$dst/xterm.css"
cp "$src/LICENSE" "$dst/XTERM-LICENSE"
echo "vendored @xterm/xterm $(node -p "require('./$src/package.json').version") into $dst" >&2
