#!/bin/bash
# cpu_serve.sh TREE OUT [serve args]: 4 light clients, CPU per thread kind over 15 s
TREE=$1; OUT=$2; shift 2
cd "$(dirname "$0")/../../.."  # the repository root
python -m benchmarks.bench_serve --clients 4 --light --edit smile=1.5 --tree x=$TREE --seconds 30 --warmup 5 --server-args "$*" > $OUT.bench.txt 2>&1 &
BENCH=$!
sleep 22
PID=$(pgrep -f "realtime.cli serve --port 0" | head -1)
python docs/bench/scale/cpu_threads.py $PID 15 > $OUT.cpu.txt 2>&1
wait $BENCH
tail -1 $OUT.bench.txt; cat $OUT.cpu.txt
