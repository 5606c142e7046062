#!/usr/bin/env bash
# How long `baton start` takes from the command line, without a server (it starts Kafka clients and reads the
# instance's partition) and through `baton serve` (one request). Restarts the local broker, applies the topics
# in a fresh namespace, runs a coordinator, the example workers and a server, and times six starts each way
# (the first start of a fresh namespace includes the coordinator taking its partitions). Stops what it started.
#
#   bench/cli-start.sh [BATON-BINARY]      (default: .build/release/baton)
set -euo pipefail
cd "$(dirname "$0")/.."
B=${1:-.build/release/baton}
work=$(mktemp -d)
export BATON_NAMESPACE=clistart$$ BATON_KEYS_DIR=${BATON_KEYS_DIR:-$work/keys}
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT
"$B" keys init "$BATON_KEYS_DIR" >/dev/null
deploy/local-broker restart >/dev/null
"$B" topics apply >/dev/null
"$B" definitions register examples/order-fulfillment.yaml >/dev/null
"$B" coordinator --log-level error & pids+=($!)
"$B" example-workers --log-level error & pids+=($!)
token=$("$B" auth add-token --file "$work/auth.yaml" cli --roles starter | tail -1)
port=18080
"$B" serve --auth "$work/auth.yaml" --port $port --log-level error & pids+=($!)
for _ in $(seq 1 100); do curl -s -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.2; done  # waits for the port
ms() { local s e; s=$(date +%s%N); "$@" >/dev/null; e=$(date +%s%N); echo $(((e - s) / 1000000)); }
for i in 1 2 3 4 5 6; do echo "without a server, start $i: $(ms "$B" start order_fulfillment_saga --input "{\"order_id\":\"k$i\"}") ms"; done
for i in 1 2 3 4 5 6; do
  echo "through the server, start $i: $(ms "$B" start order_fulfillment_saga --input "{\"order_id\":\"s$i\"}" --server "http://127.0.0.1:$port" --token "$token") ms"
done
