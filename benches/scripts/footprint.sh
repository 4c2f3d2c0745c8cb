#!/usr/bin/env bash
# Memory and disk a durable node needs (docs/PERFORMANCE.md, "Footprint"): a 3-node
# durable cluster on loopback; for each key count N, every key of 0..N is written once
# (16-byte keys, 100-byte values, so about N x 116 bytes of live data per node at k = 3),
# then written again REWRITES times; after each pass, every node's resident memory
# (VmRSS from /proc) and the size of its data directory are printed: the disk space its
# files take (du), and their apparent size (redb extends its file ahead of use, sparsely).
# The cluster restarts empty for each N. NODE_ARGS adds flags to every node (say
# NODE_ARGS="--cache-mib 16 --register-cache-mib 16").
#   MEMO=target/loadgen/release/memo MEMO_BENCH=target/loadgen/release/memo-bench \
#     SIZES="200000 1000000" REWRITES=2 benches/scripts/footprint.sh
set -u
MEMO=${MEMO:-target/loadgen/release/memo}
BENCH=${MEMO_BENCH:-target/loadgen/release/memo-bench}
NODES=n1=127.0.0.1:7201,n2=127.0.0.1:7202,n3=127.0.0.1:7203
EPS=127.0.0.1:7201,127.0.0.1:7202,127.0.0.1:7203
report() { # label dir pids...
  local label=$1 dir=$2; shift 2
  local rss=() disk=() apparent=()
  for i in 1 2 3; do
    local pid=${!i}
    rss+=("$(awk '/VmRSS/ {printf "%.0f", $2 / 1024}' /proc/"$pid"/status)")
    disk+=("$(du -s --block-size=1M "$dir/n$i" | cut -f1)")
    apparent+=("$(du -s --apparent-size --block-size=1M "$dir/n$i" | cut -f1)")
  done
  printf '%-24s resident MiB %s   data dir MiB on disk %s (apparent %s)\n' "$label" "${rss[*]}" "${disk[*]}" "${apparent[*]}"
}
for n in ${SIZES:-200000}; do
  dir=$(mktemp -d /tmp/memo-footprint.XXXX)
  pids=()
  for i in 1 2 3; do
    "$MEMO" node run --id n$i --listen 127.0.0.1:720$i --initial-nodes $NODES --data-dir "$dir/n$i" \
      ${NODE_ARGS:-} >"$dir/log$i" 2>&1 &
    pids+=($!)
  done
  sleep 2
  report "$n keys: empty" "$dir" "${pids[@]}"
  for pass in $(seq 0 "${REWRITES:-2}"); do
    "$BENCH" --endpoints $EPS --clients 64 --conns 8 --key-size 16 --val-size 100 --key-space "$n" \
      --total 1 --prefill --max-secs 1200 --no-progress --json put >"$dir/pass$pass.json" || exit 1
    python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); e=d.get("prefill_errors"); sys.exit(f"prefill errors: {e}") if e else None' "$dir/pass$pass.json" || exit 1
    sleep 2
    report "$n keys: pass $pass" "$dir" "${pids[@]}"
  done
  kill "${pids[@]}"; wait 2>/dev/null; rm -rf "$dir"
done
