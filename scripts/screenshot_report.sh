#!/usr/bin/env bash
# Render a run's HTML report in headless Chromium and save a screenshot, to check it really displays.
# Usage: scripts/screenshot_report.sh RUN_OR_INDEX_HTML [OUT.png] [HEIGHT] [WIDTH]
#   RUN_OR_INDEX_HTML  a run folder (its report/index.html is used) or an HTML file
#   OUT.png            where to write the screenshot (default: next to the page, screenshot.png)
#   HEIGHT             window height in pixels (default 4000)
#   WIDTH              window width in pixels (default 1280)
# Needs Debian's chromium (apt-get install -y chromium). Nothing is fetched from the network.
set -euo pipefail

target=${1:?usage: $0 RUN_OR_INDEX_HTML [OUT.png] [HEIGHT] [WIDTH]}
page=$target
[[ -d $target ]] && page=$target/report/index.html
[[ -f $page ]] || { echo "$0: no report at $page; run 'shallowdeep report RUN' first" >&2; exit 2; }
page=$(realpath "$page")
out=$(realpath -m "${2:-$(dirname "$page")/screenshot.png}")
height=${3:-4000}
width=${4:-1280}

browser=$(command -v chromium || command -v chromium-browser || true)
[[ -n $browser ]] || { echo "$0: chromium not found; install it with: apt-get install -y chromium" >&2; exit 2; }

profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
"$browser" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --user-data-dir="$profile" --hide-scrollbars --screenshot="$out" \
    --window-size="$width","$height" "file://$page" >/dev/null 2>&1
[[ -s $out ]] || { echo "$0: chromium wrote no screenshot" >&2; exit 1; }
echo "$out"
