#!/bin/bash
cd "$(dirname "$0")/../../.."
.venv/bin/python -m benchmarks.serve_load --run runs/m30k_de_en --dtype bf16 --beam 5 --requests 2000 --clients 32 --max-wait-ms 10 --rounds 3 --server-env OMP_WAIT_POLICY=ACTIVE --out docs/runs/serve_omp_tried/ratio_active.json > /dev/null 2>docs/runs/serve_omp_tried/ratio_active.err
.venv/bin/python -m benchmarks.serve_load --run runs/m30k_de_en --dtype bf16 --beam 5 --requests 2000 --clients 32 --max-wait-ms 10 --rounds 3 --out docs/runs/serve_omp_tried/ratio_default.json > /dev/null 2>docs/runs/serve_omp_tried/ratio_default.err
