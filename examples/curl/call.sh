#!/bin/sh
# call.sh - call a maitred service through the REST API of the http transport.
#
#   ./call.sh SERVICE [BODY]         # BODY defaults to standard input
#
# Prints the reply body (the final reply's frames concatenated) as it comes, without adding a
# line break. The exit status is curl's: 0 on 200, 22 on an HTTP error (the JSON error body,
# e.g. {"error": {"code": "timeout", ...}}, is still printed), 28 when --max-time passes.
#
# Environment:
#   MAITRED_HTTP     the broker's http listener (default http://127.0.0.1:8080)
#   MAITRED_TIMEOUT  the request's deadline in seconds, sent as X-Maitred-Timeout (default 10)
#
# The request: POST /v1/services/{name}, the body is the request (one frame). A service with no
# worker waits for one until the deadline (504), or fails at once (503) when its policy says
# on_no_worker = "fail". See docs/reference/http.md.
set -eu

if [ $# -lt 1 ] || [ $# -gt 2 ]; then
    echo "usage: $0 SERVICE [BODY]" >&2
    exit 2
fi
base=${MAITRED_HTTP:-http://127.0.0.1:8080}
timeout=${MAITRED_TIMEOUT:-10}
service=$1

# --data-binary sends the body byte for byte ("@-": from standard input); --fail-with-body
# (curl >= 7.76) sets the exit status on 4xx/5xx but still prints maitred's error body.
if [ $# -eq 2 ]; then
    data=$2
else
    data=@-
fi
exec curl --silent --show-error --fail-with-body \
    --max-time "$((${timeout%.*} + 5))" \
    -H "X-Maitred-Timeout: $timeout" \
    -H 'Content-Type: application/octet-stream' \
    --data-binary "$data" \
    "$base/v1/services/$service"
