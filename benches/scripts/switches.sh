#!/usr/bin/env bash
# What durability costs a put (docs/PERFORMANCE.md, "a group commit that lingers under
# load"): for each SILO (durable: --data-dir; memory: none) and each memo binary given,
# three `memo node run` processes on loopback, TOTAL puts from 64 clients over 100,000
# keys (BENCH_ARGS adds memo-bench flags, say "--rate 3000"); prints throughput, latency,
# server CPU per put (memo-bench --server-pids) and the context switches per put of every
# thread of the three processes (/proc/PID/task/*/status, before and after).
#   MEMO_BENCH=target/loadgen/release/memo-bench SILOS="memory durable" \
#     benches/scripts/switches.sh old=/path/to/memo new=target/loadgen/release/memo
set -u
BENCH=${MEMO_BENCH:-target/loadgen/release/memo-bench}
TOTAL=${TOTAL:-100000}
C="--key-size 16 --val-size 100 --key-space 100000 --max-secs 120 --no-progress --json"
switches() { local t=0; for p in "$@"; do for f in /proc/$p/task/*/status; do
  t=$((t + $(awk '/ctxt_switches/ {s += $2} END {print s + 0}' "$f"))); done; done; echo $t; }
for silo in ${SILOS:-memory durable}; do
  for spec in "$@"; do
    label=${spec%%=*}; bin=${spec#*=}
    dir=$(mktemp -d /tmp/memo-switches.XXXX)
    nodes=n1=127.0.0.1:7101,n2=127.0.0.1:7102,n3=127.0.0.1:7103
    pids=()
    for i in 1 2 3; do
      data=(); [ "$silo" = durable ] && data=(--data-dir "$dir/n$i")
      "$bin" node run --id n$i --listen 127.0.0.1:710$i --initial-nodes $nodes "${data[@]}" >"$dir/log$i" 2>&1 &
      pids+=($!)
    done
    sleep 2
    before=$(switches "${pids[@]}")
    "$BENCH" --endpoints 127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103 --clients 64 --conns 8 --total "$TOTAL" \
      ${BENCH_ARGS:-} $C --server-pids "$(IFS=,; echo "${pids[*]}")" put >"$dir/bench.json"
    after=$(switches "${pids[@]}")
    python3 -c '
import json,sys
d=json.load(open(sys.argv[1])); p={x["percent"]:x["secs"]*1000 for x in d["latency"]["percentiles"]}
print("%-8s %-8s %7.0f puts/s  p50 %.2f ms  p99 %.2f ms  server cpu %6.1f us/put  %.2f context switches/put  errors %s" % (
  sys.argv[2], sys.argv[3], d["requests_per_sec"], p[50.0], p[99.0], d.get("server_cpu_us_per_request") or 0,
  (int(sys.argv[5]) - int(sys.argv[4])) / float(sys.argv[6]), d.get("errors")), flush=True)' \
      "$dir/bench.json" "$label" "$silo" "$before" "$after" "$TOTAL"
    kill "${pids[@]}"; wait "${pids[@]}" 2>/dev/null; rm -rf "$dir"
  done
done
