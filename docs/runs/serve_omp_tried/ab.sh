#!/bin/bash
# A/B: libgomp wait policy in the server (700 requests, served only)
cd "$(dirname "$0")/../../.."
for i in 1 2; do
 for pol in default ACTIVE; do
  env_arg=(); [ $pol = ACTIVE ] && env_arg=(--server-env OMP_WAIT_POLICY=ACTIVE)
  .venv/bin/python -m benchmarks.serve_load --run runs/m30k_de_en --dtype bf16 --beam 5 --requests 700 --clients 32 --max-wait-ms 10 --rss-at 200 --no-offline "${env_arg[@]}" --out docs/runs/serve_omp_tried/$pol-$i.json > /dev/null 2>docs/runs/serve_omp_tried/$pol-$i.err
  python3 -c "import json,sys;d=json.load(open('docs/runs/serve_omp_tried/$pol-$i.json'));s=d['served'];print('$pol-$i',s['sentences_per_second'],s['sentences_per_busy_second'],s['engine_busy_seconds'],s['seconds'],s['latency_ms']['p50'],s.get('server_cpu_seconds'))"
 done
done
