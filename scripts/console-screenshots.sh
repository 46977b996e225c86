#!/usr/bin/env bash
# Refresh docs/images/console/: the web console's screenshots (desktop and 375 px wide), taken by
# the browser tests as they run. Needs Chromium (apt-get install chromium) and the dev extra.
set -euo pipefail
cd "$(dirname "$0")/.."
out=docs/images/console
mkdir -p "$out"
IMAGEGATE_CONSOLE_SCREENSHOTS="$out" \
  IMAGEGATE_TEST_CHROMIUM="${IMAGEGATE_TEST_CHROMIUM:-$(command -v chromium)}" \
  python -m pytest tests/browser -q -p no:randomly "$@"
ls "$out"
