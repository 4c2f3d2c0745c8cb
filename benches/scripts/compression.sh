#!/usr/bin/env bash
# Compression on a compressible data set (docs/PERFORMANCE.md, "Compression"): for each
# setting, a fresh 3-node durable cluster on loopback with --compression SETTING, then
# KEYS 64-client puts of JSON records (--value-kind json, VAL bytes) over KEYS keys, then
# GETS 64-client gets (after every key is written once, unmeasured); throughput, server
# CPU per operation, peer bytes per put and the data directories' size after the puts.
# A setting with +enc also encrypts (docs/PERFORMANCE.md, "Encryption"): the nodes get a
# key file, and the policy table gets the rule "" --compression CODEC --encryption on
# before the puts. A setting ending in +vN keeps N versions of every key ("Versioning"):
# the rule gets --versions N. SPACE (default KEYS) is the key space of the puts: set it
# below KEYS to rewrite every key several times.
#   MEMO=target/loadgen/release/memo MEMO_BENCH=target/loadgen/release/memo-bench \
#     benches/scripts/compression.sh none lz4 zstd none+enc zstd+enc none+v10
set -u
MEMO=${MEMO:-target/loadgen/release/memo}
BENCH=${MEMO_BENCH:-target/loadgen/release/memo-bench}
VAL=${VAL:-4096}; KEYS=${KEYS:-20000}; GETS=${GETS:-40000}; SPACE=${SPACE:-$KEYS}
C="--key-size 16 --val-size $VAL --value-kind json --max-secs 300 --no-progress --json"
peer_bytes() { for p in 7101 7102 7103; do "$MEMO" status --endpoint 127.0.0.1:$p --output json; done | python3 -c '
import json,sys
text=sys.stdin.read(); dec=json.JSONDecoder(); i=0; b=0
while True:
    rest=text[i:].lstrip()
    if not rest: break
    d,n=dec.raw_decode(rest); i=len(text)-len(rest)+n; b+=d["stats"]["peer_bytes_sent"]
print(b)'; }
summ() { python3 -c '
import json,sys
d=json.load(sys.stdin)
p={x["percent"]:x["secs"]*1000 for x in d["latency"]["percentiles"]}
print("%-14s %8.0f req/s  p50 %.2f ms  server cpu %6.1f us/op  errors %s" % (sys.argv[1], d["requests_per_sec"], p[50.0], d.get("server_cpu_us_per_request") or 0, d.get("errors")), flush=True)' "$1"; }
for setting in "$@"; do
  dir=$(mktemp -d /tmp/memo-compression.XXXX)
  nodes=n1=127.0.0.1:7101,n2=127.0.0.1:7102,n3=127.0.0.1:7103
  codec=$setting; versions=""; enc=""
  case "$codec" in *+v*) versions=${codec##*+v}; codec=${codec%+v*} ;; esac
  case "$codec" in *+enc) enc=1; codec=${codec%+enc} ;; esac
  keys=()
  rule=()
  [ -n "$versions" ] && rule+=(--versions "$versions")
  if [ -n "$enc" ]; then
    rule+=(--encryption on)
    printf 'k1 %s\n' "$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')" >$dir/keys
    keys=(--encryption-key-file $dir/keys)
  fi
  pids=()
  for i in 1 2 3; do
    "$MEMO" node run --id n$i --listen 127.0.0.1:710$i --initial-nodes $nodes --data-dir $dir/n$i \
      --compression "$codec" "${keys[@]}" >$dir/log$i 2>&1 &
    pids+=($!)
  done
  sleep 2
  if [ ${#rule[@]} -gt 0 ]; then
    for _ in 1 2 3 4 5 6 7 8 9 10; do
      "$MEMO" policy set "" --compression "$codec" "${rule[@]}" --endpoint 127.0.0.1:7101 >/dev/null && break
      sleep 1
    done
  fi
  mp=$(IFS=,; echo "${pids[*]}")
  m=127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103
  b0=$(peer_bytes)
  # KEYS puts over SPACE keys (by default KEYS: about 63% of the keys get a value, some several).
  $BENCH --endpoints $m --clients 64 --conns 8 --total $KEYS --key-space $SPACE $C --server-pids $mp put | summ "$setting put"
  b1=$(peer_bytes)
  echo "$setting peer bytes per put: $(( (b1 - b0) / KEYS ))  data dirs: $(du -sm $dir | cut -f1) MiB (values written: $(( KEYS * VAL / 1048576 )) MiB, less the overwritten)"
  # get writes every key once first (not measured), so every get finds a value.
  $BENCH --endpoints $m --clients 64 --conns 8 --total $GETS --key-space $SPACE $C --server-pids $mp get | summ "$setting get"
  kill "${pids[@]}"; wait "${pids[@]}" 2>/dev/null; rm -rf "$dir"
done
