#!/usr/bin/env bash
# Durable 3-node memo against etcd (docs/PERFORMANCE.md, "Against etcd after this session"):
# for each memo binary, a fresh 3-node durable cluster on loopback: 1,500 sequential puts,
# 40,000 puts by 64 clients over 100,000 keys, 60,000 linearizable gets (no prefill), then
# updates: every key written (the prefill of `memo-bench get`) and 40,000 puts from 64
# clients over them, with memo's peer messages per update (`memo status` counters); then
# the same against the running etcd cluster of the Setup (127.0.0.1:{1,2,3}2379).
#   MEMO_BENCH=target/loadgen/release/memo-bench benches/scripts/durable.sh old=/path/to/memo new=target/loadgen/release/memo
# memo-bench must be built with --features etcd (see the Setup).
set -u
B=${MEMO_BENCH:-target/loadgen/release/memo-bench}
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
E=127.0.0.1:12379,127.0.0.1:22379,127.0.0.1:32379
for spec in "$@"; do
  label=${spec%%=*}; bin=${spec#*=}
  dir=$(mktemp -d /tmp/memo-durable.XXXX)
  nodes=n1=127.0.0.1:7101,n2=127.0.0.1:7102,n3=127.0.0.1:7103
  pids=()
  for i in 1 2 3; do "$bin" node run --id n$i --listen 127.0.0.1:710$i --initial-nodes $nodes --data-dir $dir/n$i >$dir/log$i 2>&1 & pids+=($!); done
  sleep 2
  mp=$(IFS=,; echo "${pids[*]}")
  m=127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103
  $B --endpoints $m --clients 1 --conns 1 --total 1500 $C --server-pids $mp put | summ "$label seq put"
  $B --endpoints $m --clients 64 --conns 8 --total 40000 $C --server-pids $mp put | summ "$label c64 put"
  $B --endpoints $m --clients 64 --conns 8 --total 60000 $C --no-prefill --server-pids $mp get | summ "$label c64 get"
  $B --endpoints $m --clients 64 --conns 8 --total 1000 $C get >/dev/null
  m0=$(messages "$bin")
  $B --endpoints $m --clients 64 --conns 8 --total 40000 $C --server-pids $mp put | summ "$label c64 update"
  m1=$(messages "$bin")
  echo "$label: $(python3 -c "print('%.2f' % (($m1 - $m0) / 40000))") peer messages per update"
  kill "${pids[@]}"; wait "${pids[@]}" 2>/dev/null; rm -rf "$dir"
done
ep=$(pgrep -x etcd | tr '\n' ','); ep=${ep%,}
$B --target etcd --endpoints $E --clients 1 --conns 1 --total 1500 $C --server-pids $ep put | summ "etcd seq put"
$B --target etcd --endpoints $E --clients 64 --conns 8 --total 40000 $C --server-pids $ep put | summ "etcd c64 put"
$B --target etcd --endpoints $E --clients 64 --conns 8 --total 60000 $C --no-prefill --server-pids $ep get | summ "etcd c64 get"
$B --target etcd --endpoints $E --clients 64 --conns 8 --total 1000 $C get >/dev/null
$B --target etcd --endpoints $E --clients 64 --conns 8 --total 40000 $C --server-pids $ep put | summ "etcd c64 update"
