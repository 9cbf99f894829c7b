#!/usr/bin/env bash
# Issue 14's experiment, resumable across sessions and machines: the convergence check
# (ResNet-20 at twice the epochs), then the grid. Each search continues where it stopped
# (from Ray's state when this machine has it, else from the committed study and the
# epoch checkpoints in the folder); a finished one is skipped.
#   nohup scripts/compression_paper.sh > compression.log 2>&1 &
set -euo pipefail
cd "$(dirname "$0")/.."
LMSEARCH=${LMSEARCH:-.venv/bin/lmsearch}
OUT=${OUT:-results/compression-paper-w8}
export RAY_AUTH_MODE=disabled

status() { python3 -c 'import json, sys; print(json.load(open(sys.argv[1])).get("status", ""))' "$1/experiment.json"; }

run() {
    local space=$1 out=$2
    if [ -f "$out/experiment.json" ]; then
        if [ "$(status "$out")" = finished ]; then
            echo "[compression] $out: finished"
            return
        fi
        echo "[compression] $out: resuming ($(date -u +%FT%TZ))"
        $LMSEARCH search "$space" --out "$out" --resume
    else
        echo "[compression] $out: starting ($(date -u +%FT%TZ))"
        mkdir -p "$(dirname "$out")"
        $LMSEARCH search "$space" --out "$out"
    fi
    echo "[compression] $out: $(status "$out") ($(date -u +%FT%TZ))"
}

# The 30-epoch grid (search_spaces/compression_paper_w8_30ep.yaml, "$OUT/grid") failed its
# convergence check (ResNet-20 gained 0.59 points from 30 to 60 epochs; 0.3 allowed) and was
# stopped with 1 of 24 trials done; the experiment goes on at 60 epochs, then checks 60 vs 120.
run search_spaces/compression_paper_w8_convergence.yaml "$OUT/convergence"
run search_spaces/compression_paper_w8_60ep.yaml "$OUT/grid60"
# Once the grid has finished, the analysis plan's steps 2-6 and the learned k_n of step 7 (results
# README): the verdict with its interval, the tables, the plot and the k_n, written beside the runs.
if [ "$(status "$OUT/grid60")" = finished ]; then
    mkdir -p "$OUT/analysis"
    $LMSEARCH pareto "$OUT/grid60" --compression --compression-plot "$OUT/analysis/compression.png" \
        --compression-csv "$OUT/analysis/compression.csv" --coefficients-csv "$OUT/analysis/k_n.csv" \
        > "$OUT/analysis/analysis.txt"
    echo "[compression] analysis written to $OUT/analysis/ ($(date -u +%FT%TZ))"
fi
run search_spaces/compression_paper_w8_convergence_120.yaml "$OUT/convergence120"

