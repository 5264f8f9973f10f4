#!/bin/bash
# count.sh MULTIPLE, from the repository root: oneDNN kernel creations between BEGIN and END
# of check.py's "kernels" mode (12 calls of 94 sentences in request order).
set -e
D=docs/runs/serve_source_padding
TMP=$(mktemp -d)
PYTHONPATH=. ONEDNN_VERBOSE=profile_create OMP_NUM_THREADS=2 python $D/check.py kernels $1 > $TMP/verbose.txt 2>&1
awk '/^BEGIN/{on=1;next} /^END/{on=0} on' $TMP/verbose.txt > $TMP/between.txt
echo "multiple $1: miss $(grep -c cache_miss $TMP/between.txt) hit $(grep -c cache_hit $TMP/between.txt)"
grep cache_miss $TMP/between.txt | awk -F, '{print $5}' | sort | uniq -c
grep cache_miss $TMP/between.txt | awk -F, '{s+=$NF} END {print "create ms", s}'
