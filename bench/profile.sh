#!/usr/bin/env bash
# CPU profile of the coordinator and the example workers under load: runs `baton bench` (any arguments after
# the output directory are passed to it) on a restarted private broker, samples both processes with perf for
# a few seconds once the measured instances are flowing, and writes each one's hottest symbols (self time) and
# its time by module to OUT/coordinator.txt and OUT/workers.txt.
#
#   bench/profile.sh /tmp/profile --instances 15000 --partitions 3
#
# Needs Debian's linux-perf and a release build (swift build -c release --product baton). Environment:
# BATON_LOCAL_BROKER_PORT (default 19092), PROFILE_DELAY (seconds after the coordinator starts, default 8),
# PROFILE_SECONDS (default 3).
set -euo pipefail
out=${1:?usage: bench/profile.sh OUT-DIR [bench arguments...]}
shift
cd "$(dirname "$0")/.."
mkdir -p "$out"
export BATON_LOCAL_BROKER_PORT=${BATON_LOCAL_BROKER_PORT:-19092}
export BATON_BROKERS=127.0.0.1:$BATON_LOCAL_BROKER_PORT
command -v perf >/dev/null || { echo "perf is not installed (Debian: linux-perf)" >&2; exit 1; }
deploy/local-broker restart >/dev/null
bench_pid=
cleanup() {
  [ -n "$bench_pid" ] && kill "$bench_pid" 2>/dev/null || true
  deploy/local-broker stop >/dev/null 2>&1 || true
}
trap cleanup EXIT
.build/release/baton bench "$@" >"$out/bench.log" 2>&1 &
bench_pid=$!
coord=
for _ in $(seq 1 600); do
  coord=$(pgrep -f "release/baton coordinator --namespace" | head -1 || true)
  [ -n "$coord" ] && break
  kill -0 "$bench_pid" 2>/dev/null || { cat "$out/bench.log" >&2; exit 1; }
  sleep 0.1
done
[ -n "$coord" ] || { echo "the coordinator did not start" >&2; exit 1; }
sleep "${PROFILE_DELAY:-8}"
workers=$(pgrep -f "release/baton example-workers --pool" | head -1)
seconds=${PROFILE_SECONDS:-3}
perf record -F 499 -g -p "$coord" -o "$out/coordinator.data" -- sleep "$seconds" >/dev/null 2>&1 &
perf record -F 499 -g -p "$workers" -o "$out/workers.data" -- sleep "$seconds" >/dev/null 2>&1
wait "$bench_pid" || true
bench_pid=
set +o pipefail  # head closes perf report's output early
for who in coordinator workers; do
  {
    echo "# $who: self time by module"
    perf report -i "$out/$who.data" --no-children --sort dso --stdio 2>/dev/null | grep -E '^ +[0-9]' | head -15
    echo
    echo "# $who: hottest symbols (self time)"
    perf report -i "$out/$who.data" --no-children --sort sym --stdio -g none 2>/dev/null | grep -E '^ +[0-9]' | head -60 \
      | swift demangle --simplified | cut -c1-200
    echo
    echo "# $who: Baton's own functions, with what they call (inclusive time)"
    perf report -i "$out/$who.data" --children --sort sym --stdio -g none 2>/dev/null | grep -E '^ +[0-9]' \
      | swift demangle --simplified | grep -E 'Baton|baton|Saga|Codec|Wire|Message|Partition|Coordinator|Worker|Instance|rd_kafka' \
      | head -60 | cut -c1-200
  } >"$out/$who.txt"
done
grep -E "throughput|CPU|latency" "$out/bench.log" || true
echo "profiles: $out/coordinator.txt $out/workers.txt"
