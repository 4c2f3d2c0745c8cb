#!/usr/bin/env bash
# Updates against etcd (docs/PERFORMANCE.md, "a group commit that lingers under load"):
# for each memo binary, a fresh 3-node durable cluster on loopback; every key of the
# 100,000 written first (the prefill of `memo-bench get`), then TOTAL puts from 64
# clients over those keys, with the peer messages per put (`memo status` counters before
# and after); then the same updates against the running etcd cluster of the Setup
# (127.0.0.1:{1,2,3}2379), if one runs.
#   MEMO_BENCH=target/loadgen/release/memo-bench benches/scripts/updates.sh old=/path/to/memo new=target/loadgen/release/memo
# memo-bench must be built with --features etcd (see the Setup) for the etcd part.
set -u
B=${MEMO_BENCH:-target/loadgen/release/memo-bench}
TOTAL=${TOTAL:-40000}
C="--key-size 16 --val-size 100 --key-space 100000 --max-secs 120 --no-progress --json"
summ() { python3 -c '
import json,sys
d=json.load(sys.stdin)
p={x["percent"]:x["secs"]*1000 for x in d["latency"]["percentiles"]}
print("%-22s %8.0f req/s  p50 %.2f ms  p99 %.2f ms  server cpu %.1f us  busy %.2f  errors %s" % (sys.argv[1], d["requests_per_sec"], p[50.0], p[99.0], d.get("server_cpu_us_per_request") or 0, d.get("machine_busy") or 0, d.get("errors")), flush=True)' "$1"; }
messages() { for ep in 127.0.0.1:7101 127.0.0.1:7102 127.0.0.1:7103; do "$1" status --endpoint $ep --output json; done |
  python3 -c '
import json,sys
text=sys.stdin.read(); dec=json.JSONDecoder(); i=0; m=0
while True:
    rest=text[i:].lstrip()
    if not rest: break
    d,n=dec.raw_decode(rest); i=len(text)-len(rest)+n
    m+=d["stats"]["peer_messages_sent"]
print(m)'; }
for spec in "$@"; do
  label=${spec%%=*}; bin=${spec#*=}
  dir=$(mktemp -d /tmp/memo-updates.XXXX)
  nodes=n1=127.0.0.1:7101,n2=127.0.0.1:7102,n3=127.0.0.1:7103
  pids=()
  for i in 1 2 3; do "$bin" node run --id n$i --listen 127.0.0.1:710$i --initial-nodes $nodes --data-dir $dir/n$i >$dir/log$i 2>&1 & pids+=($!); done
  sleep 2
  mp=$(IFS=,; echo "${pids[*]}")
  m=127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103
  $B --endpoints $m --clients 64 --conns 8 --total 1000 $C get >/dev/null
  m0=$(messages "$bin")
  $B --endpoints $m --clients 64 --conns 8 --total "$TOTAL" $C --server-pids $mp put | summ "$label c64 update"
  m1=$(messages "$bin")
  echo "$label: $(python3 -c "print('%.2f' % (($m1 - $m0) / $TOTAL))") peer messages per update"
  kill "${pids[@]}"; wait "${pids[@]}" 2>/dev/null; rm -rf "$dir"
done
if ep=$(pgrep -x etcd | tr '\n' ','); [ -n "$ep" ]; then
  E=127.0.0.1:12379,127.0.0.1:22379,127.0.0.1:32379
  $B --target etcd --endpoints $E --clients 64 --conns 8 --total 1000 $C get >/dev/null
  $B --target etcd --endpoints $E --clients 64 --conns 8 --total "$TOTAL" $C --server-pids ${ep%,} put | summ "etcd c64 update"
fi
