#!/bin/bash
# served-only 700 requests: OMP wait settings, two passes in alternating order
cd "$(dirname "$0")/../../.."
run() { name=$1; shift
  .venv/bin/python -m benchmarks.serve_load --run runs/m30k_de_en --dtype bf16 --beam 5 --requests 700 --clients 32 --max-wait-ms 10 --rss-at 200 --no-offline "$@" --out docs/runs/serve_omp_tried/spin-$name.json > /dev/null 2>docs/runs/serve_omp_tried/spin-$name.err
  python3 -c "import json;d=json.load(open('docs/runs/serve_omp_tried/spin-$name.json'));s=d['served'];print('$name',s['sentences_per_second'],s['sentences_per_busy_second'],s['latency_ms']['p50'],s.get('server_cpu_seconds'))"
}
for pass in 1 2; do
 run default-$pass
 run active-$pass --server-env OMP_WAIT_POLICY=ACTIVE
 run spin30M-$pass --server-env GOMP_SPINCOUNT=30000000
 run spin3M-$pass --server-env GOMP_SPINCOUNT=3000000
done
