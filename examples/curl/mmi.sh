#!/bin/sh
# mmi.sh - the management interface (MMI) through the REST API, as JSON.
#
#   ./mmi.sh services          # GET /v1/services: every service and its live workers
#   ./mmi.sh service NAME      # GET /v1/services/NAME: one service and its workers (404: unknown)
#   ./mmi.sh queues            # GET /v1/queues: queue depths
#   ./mmi.sh topics            # GET /v1/topics: subscriptions
#   ./mmi.sh info              # POST /v1/services/mmi.info: version, uptime, transports
#
# Environment: MAITRED_HTTP, the broker's http listener (default http://127.0.0.1:8080).
set -eu

base=${MAITRED_HTTP:-http://127.0.0.1:8080}
get() {
    exec curl --silent --show-error --fail-with-body --max-time 10 "$base$1"
}
case "${1:-}" in
    services) get /v1/services ;;
    service)
        [ $# -eq 2 ] || { echo "usage: $0 service NAME" >&2; exit 2; }
        get "/v1/services/$2" ;;
    queues) get /v1/queues ;;
    topics) get /v1/topics ;;
    info)
        # mmi.* services are called like any other service (here with an empty body).
        exec curl --silent --show-error --fail-with-body --max-time 10 -X POST \
            "$base/v1/services/mmi.info" ;;
    *)
        echo "usage: $0 services | service NAME | queues | topics | info" >&2
        exit 2 ;;
esac
