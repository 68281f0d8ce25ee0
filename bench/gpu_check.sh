#!/usr/bin/env bash
# The GPU checks and benchmarks, for a machine with one CUDA GPU (see README "Benchmarks"). Results go to $OUT
# (or ./gpu-results) as JSON lines, written as each step finishes so a run cut short keeps what it measured.
#   bash bench/gpu_check.sh [equivalence] [bench-small] [stream] [fidelity] [mbd] [server] [bench-medium-large] [slots]
#     [slots-medium-large]
# (default: all; more than one 10-minute call holds, so split them: e.g. equivalence bench-small stream, then the rest)
# SMALL_ARGS / ML_ARGS add benchmark flags (e.g. "--reference-duration 5 --profile") to the small / medium+large runs.
set -u
out=${OUT:-gpu-results}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD/src:$PWD
else
  export PYTHONPATH=$PWD/src:$PWD
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" | tee -a "$out/gpu.txt"
step() { local name=$1 limit=$2; shift 2; echo "== $name"; timeout "$limit" "$@" 2>"$out/$name.err" | tee -a "$out/results.jsonl"; echo "exit ${PIPESTATUS[0]}" >>"$out/$name.err"; }
for what in ${@:-equivalence bench-small stream fidelity mbd server bench-medium-large slots slots-medium-large}; do
  case $what in
    equivalence) step equivalence 120 python3 bench/gpu_equivalence.py ;;
    bench-small) step bench-small 300 python3 -m musicgen_api.bench --models small --duration 30 --runs 3 ${SMALL_ARGS:-} ;;
    stream) step stream 150 python3 -m musicgen_api.bench --models small --duration 30 --runs 2 --stream ;;
    fidelity) step fidelity 120 python3 -m musicgen_api.bench --models small --duration 10 --fidelity ;;
    mbd) step mbd 300 python3 -m musicgen_api.bench --models --mbd --duration 30 ;;
    server) step server 200 python3 bench/server_check.py --shape small --duration 30 ;;
    bench-medium-large) step bench-medium-large 560 python3 -m musicgen_api.bench --models medium large --duration 30 \
      --reference-duration 10 --runs 2 --budget-s "${BUDGET_S:-400}" ${ML_ARGS:-} ;;
    slots) step slots 400 python3 -m musicgen_api.bench --models small --duration 30 --slots 1 2 4 8 16 ;;
    slots-medium-large) step slots-medium-large 560 python3 -m musicgen_api.bench --models medium large --duration 30 \
      --slots 1 4 8 ;;
  esac
done
tail -n 3 "$out"/*.err
