#!/usr/bin/env bash
# A 4th node joins a 3-node durable cluster holding KEYS keys (docs/PERFORMANCE.md,
# "Rebalancing"): how long the moves take, keys copied per second, and client latency
# before and during the move (8 closed-loop clients, mixed gets and puts).
#   MEMO=target/loadgen/release/memo MEMO_BENCH=target/loadgen/release/memo-bench \
#     benches/scripts/rebalance.sh
set -u
MEMO=${MEMO:-target/loadgen/release/memo}
BENCH=${MEMO_BENCH:-target/loadgen/release/memo-bench}
KEYS=${KEYS:-100000}
DURING=${DURING:-40}
dir=$(mktemp -d /tmp/memo-rebalance.XXXX)
nodes=n1=127.0.0.1:7201,n2=127.0.0.1:7202,n3=127.0.0.1:7203
pids=()
for i in 1 2 3; do
  "$MEMO" node run --id n$i --listen 127.0.0.1:720$i --initial-nodes $nodes --data-dir $dir/n$i \
    --rebalance-delay 1s >$dir/log$i 2>&1 &
  pids+=($!)
done
cleanup() { kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$dir"; }
trap cleanup EXIT
sleep 2
ep=127.0.0.1:7201,127.0.0.1:7202,127.0.0.1:7203
C="--key-size 16 --val-size 100 --key-space $KEYS --max-secs 600 --no-progress --json"
summ() { python3 -c '
import json,sys
d=json.load(sys.stdin)
p={x["percent"]:x["secs"]*1000 for x in d["latency"]["percentiles"]}
print("%-28s %8.0f req/s  p50 %.2f ms  p99 %.2f ms  errors %s" % (sys.argv[1], d["requests_per_sec"], p[50.0], p[99.0], d.get("errors")), flush=True)' "$1"; }
echo "prefilling $KEYS keys"
$BENCH --endpoints $ep --clients 64 --conns 8 --total 1000 $C get >/dev/null
$BENCH --endpoints $ep --clients 8 --conns 2 --duration 15 $C --no-prefill mixed | summ "before the join"
"$MEMO" node run --id n4 --listen 127.0.0.1:7204 --data-dir $dir/n4 --join 127.0.0.1:7201 \
  --rebalance-delay 1s >$dir/log4 2>&1 &
pids+=($!)
t0=$(date +%s.%N)
$BENCH --endpoints $ep --clients 8 --conns 2 --duration $DURING $C --no-prefill mixed >$dir/during.json &
load=$!
moves() { for i in 1 2 3 4; do "$MEMO" cluster members --endpoint 127.0.0.1:720$i --output json 2>/dev/null; done | python3 -c '
import json,sys
text=sys.stdin.read()
docs=[]; dec=json.JSONDecoder(); i=0
while i < len(text):
    text_i=text[i:].lstrip()
    if not text_i: break
    d,n=dec.raw_decode(text_i); docs.append(d); i=len(text)-len(text_i)+n
busy=sum(d["moves"]["in_flight"]+d["moves"]["queued"] for d in docs)
copied=sum(d["moves"]["keys_copied"] for d in docs)
n4=[m["partitions"] for m in docs[0]["members"] if m["id"]=="n4"] if docs else []
print(len(docs), busy, copied, n4[0] if n4 else 0)'; }
while true; do
  read -r answered busy copied held <<<"$(moves)"
  if [ "$answered" = 4 ] && [ "$busy" = 0 ] && [ "$held" -gt 0 ]; then break; fi
  sleep 0.5
done
t1=$(date +%s.%N)
python3 -c "import sys; t=float(sys.argv[2])-float(sys.argv[1]); c=int(sys.argv[3]); print('moves done in %.1f s (1 s rebalance delay included): %d keys copied, %.0f keys/s; n4 holds %s partitions' % (t, c, c/t, sys.argv[4]))" $t0 $t1 $copied $held
wait $load
summ "during the join (${DURING}s)" <$dir/during.json
