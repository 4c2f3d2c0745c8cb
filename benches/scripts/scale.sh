#!/usr/bin/env bash
# Per-operation work as the cluster grows (docs/PERFORMANCE.md, "Scaling"): for each size
# N, `memo dev --nodes N` (one process, memory silos), 21 closed-loop clients per node over
# every endpoint, 16-byte keys, 100-byte values; server CPU per put and per get (from
# /proc), peer messages and bytes per operation, and peer messages per batch (every
# node's peer_messages_sent, peer_bytes_sent and peer_batches_sent from `memo status`,
# before and after; SWIM's background traffic included).
# With PUT_RATE and GET_RATE (requests per second per node), the load is paced at that
# rate times N instead of a closed loop at saturation, so every size sees the same load
# per node (on one machine, a closed loop gives each of 12 nodes a quarter of what each
# of 3 gets). With PROCESSES=1, each node is its own `memo node run` process (memory
# silo), as on separate machines, instead of all N sharing `memo dev`'s one thread.
#   MEMO=target/loadgen/release/memo MEMO_BENCH=target/loadgen/release/memo-bench \
#     SIZES="3 6 12" benches/scripts/scale.sh
set -u
MEMO=${MEMO:-target/loadgen/release/memo}
BENCH=${MEMO_BENCH:-target/loadgen/release/memo-bench}
TOTAL=${TOTAL:-30000}
C="--key-size 16 --val-size 100 --key-space 100000 --max-secs 300 --no-progress --json"
counters() { for ep in $(echo "$1" | tr ',' ' '); do "$MEMO" status --endpoint "$ep" --output json; done | python3 -c '
import json,sys
text=sys.stdin.read(); dec=json.JSONDecoder(); i=0; m=b=t=0
while True:
    rest=text[i:].lstrip()
    if not rest: break
    d,n=dec.raw_decode(rest); i=len(text)-len(rest)+n
    m+=d["stats"]["peer_messages_sent"]; b+=d["stats"]["peer_bytes_sent"]; t+=d["stats"]["peer_batches_sent"]
print(m, b, t)'; }
report() { python3 -c '
import json,sys
d=json.load(open(sys.argv[2])); ops=d["requests"] if "requests" in d else None
m0,b0,t0,m1,b1,t1=map(int,sys.argv[3:9]); n=float(sys.argv[9])
print("%-12s %8.0f ops/s  p50 %.2f ms  server cpu %6.1f us/op  %5.1f peer msgs/op  %6.0f peer bytes/op  %5.2f msgs/batch  errors %s" % (
  sys.argv[1], d["requests_per_sec"], {x["percent"]:x["secs"]*1000 for x in d["latency"]["percentiles"]}[50.0],
  d.get("server_cpu_us_per_request") or 0, (m1-m0)/n, (b1-b0)/n, (m1-m0)/max(t1-t0,1), d.get("errors")), flush=True)' "$@"; }
for n in ${SIZES:-3 6 12}; do
  dir=$(mktemp -d /tmp/memo-scale.XXXX)
  eps=$(seq -s, -f "127.0.0.1:%g" 7601 $((7600 + n)))
  if [ "${PROCESSES:-}" = 1 ]; then
    initial=$(for i in $(seq 1 "$n"); do printf 'n%d=127.0.0.1:%d,' "$i" $((7600 + i)); done)
    pids=()
    for i in $(seq 1 "$n"); do
      "$MEMO" node run --id "n$i" --listen "127.0.0.1:$((7600 + i))" --initial-nodes "${initial%,}" \
        >"$dir/node$i.log" 2>&1 &
      pids+=($!)
    done
    dev=$(IFS=,; echo "${pids[*]}")
  else
    "$MEMO" dev --nodes "$n" --base-port 7601 >"$dir/dev.log" 2>&1 &
    dev=$!
  fi
  sleep $((2 + n / 3))
  clients=$((21 * n))
  put_pace=${PUT_RATE:+--rate $((PUT_RATE * n))}
  get_pace=${GET_RATE:+--rate $((GET_RATE * n))}
  read -r m0 b0 t0 <<<"$(counters "$eps")"
  $BENCH --endpoints "$eps" --clients $clients --conns 4 --total $TOTAL $C $put_pace --server-pids $dev put >"$dir/put.json"
  read -r m1 b1 t1 <<<"$(counters "$eps")"
  report "$n nodes put" "$dir/put.json" $m0 $b0 $t0 $m1 $b1 $t1 $TOTAL
  $BENCH --endpoints "$eps" --clients $clients --conns 4 --total 1000 $C get >/dev/null
  read -r m0 b0 t0 <<<"$(counters "$eps")"
  $BENCH --endpoints "$eps" --clients $clients --conns 4 --total $TOTAL $C $get_pace --no-prefill --server-pids $dev get >"$dir/get.json"
  read -r m1 b1 t1 <<<"$(counters "$eps")"
  report "$n nodes get" "$dir/get.json" $m0 $b0 $t0 $m1 $b1 $t1 $TOTAL
  kill ${dev//,/ }; wait 2>/dev/null; rm -rf "$dir"
done
