#!/usr/bin/env bash
# make demo: runs a worker on the embedded default (in-process nats-server,
# in-process S3 endpoint, volumes as local files) and sends a generated image
# through staging → queue → worker → volume and back.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${DEMO_DIR:-.demo}
size=${DEMO_SIZE:-256MiB}
mkdir -p "$dir"
rm -f "$dir/endpoints.json"
log="$dir/worker.log"
./bin/worker --data-dir "$dir" --http-addr 127.0.0.1:0 --log-format json >"$log" 2>&1 &
worker=$!
stop() {
  kill -TERM "$worker" 2>/dev/null || true
  wait "$worker" 2>/dev/null || true
}
trap stop EXIT
for _ in $(seq 1 100); do
  [ -s "$dir/endpoints.json" ] && break
  if ! kill -0 "$worker" 2>/dev/null; then
    echo "demo: the worker did not start; its log:" >&2
    cat "$log" >&2
    exit 1
  fi
  sleep 0.1
done
[ -s "$dir/endpoints.json" ] || { echo "demo: the worker did not come up in 10 s (log: $log)" >&2; exit 1; }
echo "worker running (pid $worker, data in $dir, log in $log)"
./bin/enqueue demo --data-dir "$dir" --size "$size" --progress always
