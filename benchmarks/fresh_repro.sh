#!/usr/bin/env bash
# `make repro` on a fresh clone of HEAD, timed as a user's machine runs it: .venv created
# from nothing, bytecode writing on. Then `make repro` again, which must do nothing.
#   benchmarks/fresh_repro.sh          # this CPU as it is
#   benchmarks/fresh_repro.sh --avx2   # this CPU held to torch's, oneDNN's and MKL's AVX2 kernels
# The clone goes beside this one, where params.yaml's data.mirror (../shared/datasets) points.
set -euo pipefail
repo=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
rev=$(git -C "$repo" rev-parse --short HEAD)
avx2=()
[ "${1:-}" = --avx2 ] && avx2=(ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2) && shift
case "${1:-}" in -*) echo "usage: $0 [--avx2] [DIR]  (unknown option: $1)" >&2; exit 2 ;; esac
dir=${1:-$(dirname "$repo")/fresh-repro-$rev${avx2:+-avx2}}
[ -e "$dir" ] && { echo "$dir exists; remove it or name another directory" >&2; exit 2; }
git clone -q "$repo" "$dir"
cd "$dir"
run() { env -u PYTHONDONTWRITEBYTECODE "${avx2[@]}" "$@"; }
start=$SECONDS
run make repro > make-repro.log 2>&1 || { tail -30 make-repro.log; exit 1; }
first=$((SECONDS - start))
start=$SECONDS
run make repro > make-repro-again.log 2>&1
again=$((SECONDS - start))
cap=$(run .venv/bin/python -c "import torch; print(torch.backends.cpu.get_cpu_capability())")
printf 'commit %s, torch CPU capability %s%s\n' "$rev" "$cap" "${avx2:+ (forced)}"
printf 'fresh-clone make repro: %d s (%d min %d s), .venv included\n' "$first" $((first / 60)) $((first % 60))
printf 'make repro again: %d s: %s\n' "$again" \
  "$(grep -o 'Data and pipelines are up to date.' make-repro-again.log || echo 'STAGES RAN (see make-repro-again.log)')"
for f in metrics/timing/*.json; do printf '  %-22s %s s\n' "$(basename "$f" .json)" "$(grep -o '[0-9.]*' "$f")"; done
grep -E '^\| (teacher|student)' reports/default-run.md
echo "clone: $dir"
