#!/usr/bin/env bash
# The side-by-side session of docs/PERFORMANCE.md: a 3-node durable memo cluster on loopback
# and the running 3-member etcd (see the setup there), interleaved, 3 rounds.
#   MEMO=target/loadgen/release/memo MEMO_BENCH=target/loadgen/release/memo-bench benches/scripts/session.sh
MEMO=${MEMO:-target/loadgen/release/memo}
set -u
S=$(mktemp -d /tmp/memosession.XXXX)
NODES=n1=127.0.0.1:7101,n2=127.0.0.1:7102,n3=127.0.0.1:7103
PIDS=()
for i in 1 2 3; do "$MEMO" node run --id n$i --listen 127.0.0.1:710$i --initial-nodes $NODES --data-dir $S/n$i >$S/log$i 2>&1 & PIDS+=($!); done
sleep 2
MP=$(IFS=,; echo "${PIDS[*]}")
EP=$(pgrep -x etcd | tr '\n' ','); EP=${EP%,}
M=127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103
E=127.0.0.1:12379,127.0.0.1:22379,127.0.0.1:32379
EL=$(ETCDCTL_API=3 etcdctl --endpoints=$E endpoint status -w json | python3 -c 'import json,sys; d=json.load(sys.stdin); print([x["Endpoint"] for x in d if x["Status"]["leader"]==x["Status"]["header"]["member_id"]][0])')
echo "etcd leader $EL; memo pids $MP; etcd pids $EP"
C="--key-size 16 --val-size 100 --key-space 100000 --max-secs 180 --no-progress --json"
B=${MEMO_BENCH:-target/loadgen/release/memo-bench}
summ() { python3 -c '
import json,sys
d=json.load(sys.stdin)
p={x["percent"]:x["secs"]*1000 for x in d["latency"]["percentiles"]}
print("%-22s %8.0f req/s  p50 %.2f ms  p99 %.2f ms  srvcpu %s us  cli %s us  busy %.2f err %s" % (sys.argv[1], d["requests_per_sec"], p[50.0], p[99.0], d.get("server_cpu_us_per_request"), d.get("client_cpu_us_per_request"), d.get("machine_busy") or 0, d.get("errors")), flush=True)' "$1"; }
for r in 1 2 3; do
  $B --endpoints $M --clients 1 --conns 1 --total 3000 $C --server-pids $MP put | summ "r$r memo seq"
  $B --target etcd --endpoints $EL --clients 1 --conns 1 --total 3000 $C --server-pids $EP put | summ "r$r etcd-leader seq"
  $B --target etcd --endpoints $E --clients 1 --conns 1 --total 3000 $C --server-pids $EP put | summ "r$r etcd-all seq"
  $B --endpoints $M --clients 64 --conns 8 --total 60000 $C --server-pids $MP put | summ "r$r memo c64 put"
  $B --target etcd --endpoints $E --clients 64 --conns 8 --total 60000 $C --server-pids $EP put | summ "r$r etcd-all c64 put"
  $B --target etcd --endpoints $EL --clients 64 --conns 8 --total 60000 $C --server-pids $EP put | summ "r$r etcd-leader c64 put"
  if [ $r = 1 ]; then
    $B --endpoints $M --clients 64 --conns 8 --total 1000 $C --prefill --server-pids $MP get | python3 -c 'import json,sys; d=json.load(sys.stdin); print("memo prefill", d["prefill_secs"], "s", d["prefill_errors"], "errors")'
    $B --target etcd --endpoints $E --clients 64 --conns 8 --total 1000 $C --prefill --server-pids $EP get | python3 -c 'import json,sys; d=json.load(sys.stdin); print("etcd prefill", d["prefill_secs"], "s", d["prefill_errors"], "errors")'
  fi
  $B --endpoints $M --clients 64 --conns 8 --total 100000 $C --no-prefill --server-pids $MP get | summ "r$r memo c64 get"
  $B --target etcd --endpoints $E --clients 64 --conns 8 --total 100000 $C --no-prefill --server-pids $EP get | summ "r$r etcd-all c64 get"
done
kill ${PIDS[@]}; wait 2>/dev/null; rm -rf $S
