#!/usr/bin/env bash
# One comparison run of docs/PERFORMANCE.md ("What changed ..."): for each memo binary
# given, a fresh 3-node durable cluster on loopback, SEQ sequential then CONC 64-client
# puts; then the same against the etcd cluster at ETCD (comma-separated endpoints), if set.
#   MEMO_BENCH=target/loadgen/release/memo-bench ETCD=127.0.0.1:12379,127.0.0.1:22379,127.0.0.1:32379 \
#     benches/scripts/compare.sh old=/path/to/memo new=target/loadgen/release/memo
set -u
BENCH=${MEMO_BENCH:-target/loadgen/release/memo-bench}
SEQ=${SEQ:-1500}; CONC=${CONC:-20000}
C="--key-size 16 --val-size 100 --key-space 100000 --max-secs 120 --no-progress --json"
summ() { python3 -c '
import json,sys
d=json.load(sys.stdin)
p={x["percent"]:x["secs"]*1000 for x in d["latency"]["percentiles"]}
print("%-22s %8.0f req/s  p50 %.2f ms  p99 %.2f ms  server cpu %s us  client cpu %s us  busy %.2f  errors %s" % (sys.argv[1], d["requests_per_sec"], p[50.0], p[99.0], d.get("server_cpu_us_per_request"), d.get("client_cpu_us_per_request"), d.get("machine_busy") or 0, d.get("errors")), flush=True)' "$1"; }
for spec in "$@"; do
  label=${spec%%=*}; bin=${spec#*=}
  dir=$(mktemp -d /tmp/memo-compare.XXXX)
  nodes=n1=127.0.0.1:7101,n2=127.0.0.1:7102,n3=127.0.0.1:7103
  pids=()
  for i in 1 2 3; do
    "$bin" node run --id n$i --listen 127.0.0.1:710$i --initial-nodes $nodes --data-dir $dir/n$i >$dir/log$i 2>&1 &
    pids+=($!)
  done
  sleep 2
  mp=$(IFS=,; echo "${pids[*]}")
  m=127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103
  $BENCH --endpoints $m --clients 1 --conns 1 --total $SEQ $C --server-pids $mp put | summ "$label seq"
  $BENCH --endpoints $m --clients 64 --conns 8 --total $CONC $C --server-pids $mp put | summ "$label c64"
  kill "${pids[@]}"; wait "${pids[@]}" 2>/dev/null; rm -rf "$dir"
done
if [ -n "${ETCD:-}" ]; then
  ep=$(pgrep -x etcd | tr '\n' ','); ep=${ep%,}
  $BENCH --target etcd --endpoints $ETCD --clients 1 --conns 1 --total $SEQ $C --server-pids $ep put | summ "etcd seq"
  $BENCH --target etcd --endpoints $ETCD --clients 64 --conns 8 --total $CONC $C --server-pids $ep put | summ "etcd c64"
fi
