#!/bin/sh
# subscribe.sh - subscribe to maitred topics as a Server-Sent Events stream, for a while.
#
#   ./subscribe.sh PATTERN [SECONDS]     # e.g. 'news.>', 'orders.*', '$sys.>'; SECONDS default 30
#
# Prints the SSE stream as it arrives, one event per publication matching PATTERN:
#
#   event: message
#   id: 1
#   data: {"topic": "news.eu", "frames": ["aGk="], "text": "hi", "headers": {...}}
#
# and exits 0 after SECONDS (curl's --max-time; its status 28 is the normal end here).
# Publish from another terminal, e.g.:  curl --data hi http://127.0.0.1:8080/v1/topics/news.eu
#
# Environment: MAITRED_HTTP, the broker's http listener (default http://127.0.0.1:8080).
# Patterns: names are dot-separated, `*` matches one segment, `>` (last) the rest; `$sys.>` is
# the broker's system events (docs/reference/events.md).
set -eu

if [ $# -lt 1 ] || [ $# -gt 2 ]; then
    echo "usage: $0 PATTERN [SECONDS]" >&2
    exit 2
fi
base=${MAITRED_HTTP:-http://127.0.0.1:8080}
seconds=${2:-30}

# Percent-encode the characters of a pattern that do not belong in a URL path ('>' and '$').
pattern=$(printf '%s' "$1" | sed -e 's/%/%25/g' -e 's/>/%3E/g' -e 's/\$/%24/g' -e 's/ /%20/g')

# -N: no buffering, print each event as it comes; the Accept header asks for the SSE stream.
status=0
curl --silent --show-error --fail -N --max-time "$seconds" \
    -H 'Accept: text/event-stream' \
    "$base/v1/topics/$pattern" || status=$?
if [ "$status" -eq 28 ]; then
    exit 0
fi
exit "$status"
