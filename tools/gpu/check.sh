#!/usr/bin/env bash
# Issue 24's measurements on a GPU machine without network, from the project root, in one call:
#   bash ../shared/gpu/prepare.sh          # once, on a machine with the package index (.gpu/: wheels, helpers)
#   SMALL=1 BUDGET=400 OUT=/tmp/gpu-out bash tools/gpu/check.sh    # a dry run, any machine
#   BUDGET=540 bash tools/gpu/check.sh     # on the GPU box, from a copy of the project root holding .gpu/
# The same frame as ../shared/gpu/check.sh (time-boxed, independent phases; results in $OUT: summary.txt,
# logs.tgz, BENCHMARKS.md, junit.xml), with this issue's phases, most important first:
#   bench    vitpipe bench --suite gpu: loop vs vitpipe (seed-sized set), frozen recipe (12,500 images),
#            fine-tune vs compute ceiling, stage start-up (the rows BENCHMARKS.md and the README quote)
#   exp5k    the seed-sized set through `dvc exp run` end to end (done when <= 30 s)
#   exp13k   12,500 train images through `dvc exp run`, cold cache (its train stage: done when <= 5 s)
#   tests    the quick tests on the CUDA host, gpu-marked ones included (done when green)
set -u
export PYTHONUNBUFFERED=1 DVC_NO_ANALYTICS=1 HF_HUB_OFFLINE=1 VITPIPE_CACHE_DIR=/tmp/vpcache
P=$PWD; O=${OUT:-/tmp/gpu-out}; mkdir -p "$O"; L=/tmp/gpu-logs; rm -rf $L; mkdir -p $L
S=$O/summary.txt; T0=$(date +%s); BUDGET=${BUDGET:-540}
note() { echo "=== +$(( $(date +%s) - T0 ))s $*" | tee -a "$S"; }
phase() {  # phase NAME SECONDS 'command'
  local name=$1 t=$2; shift 2
  local left=$(( BUDGET - ($(date +%s) - T0) )); [ "$t" -gt "$left" ] && t=$left
  [ "$t" -lt 10 ] && { note "SKIP $name (no time left)"; return; }
  note "BEGIN $name (limit ${t}s)"; local a=$(date +%s.%N)
  timeout -k 5 "$t" bash -c "$*" > "$L/$name.log" 2>&1; local rc=$?
  note "END $name rc=$rc $(python3 -c "print(round($(date +%s.%N)-$a,1))")s :: $(grep -v '^\s*$' "$L/$name.log" | tail -n 3 | tr '\n' '|' | cut -c1-600)"
  tar -czf "$O/logs.tgz" -C $L . 2>/dev/null
}
if [ -n "${SMALL:-}" ]; then C=4; TR=12; BIG=24; EP=2; SZ=64; BENCH="--small --model test_vit --img-size 32"
  TESTS="tests/model/test_devicetransform.py tests/train/test_cuda.py"  # no xdist here: the CUDA tests' collection
else C=25; TR=198; BIG=500; EP=10; SZ=224; BENCH=""; TESTS="-n 12"; fi

# Environment, as ../shared/gpu/check.sh sets it up: the wheels prepare.sh fetched into /tmp/site, `python`
# as a wrapper script (a link to a venv's python would lose the venv), the project's src/ on the path.
mkdir -p /tmp/site/bin
if [ -z "${SMALL:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl > $L/pip.log 2>&1 || note "pip install failed: $(tail -n 2 $L/pip.log)"
  export PYTHONPATH=/tmp/site
fi
printf '#!/bin/sh\nexec %s "$@"\n' "$(command -v python3)" > /tmp/site/bin/python; chmod +x /tmp/site/bin/python
export PATH=/tmp/site/bin:$PATH PYTHONPATH=${PYTHONPATH:-}:$P/src
git config user.email gpu-check@example.org; git config user.name gpu-check
note "project $(git rev-parse --short HEAD)"
phase env 40 'nvidia-smi; nproc; python -c "import sys,torch,torchvision,timm,PIL,numpy; print(sys.version, torch.__version__, torchvision.__version__, timm.__version__, PIL.__version__, numpy.__version__, torch.cuda.is_available())"'

phase bench 240 "python -m vitpipe.cli bench --suite gpu --epochs $EP $BENCH --out $O/BENCHMARKS.md"

phase draw 60 "python tools/gpu/draw.py /tmp/d5k --classes $C --train $TR --size $SZ && python tools/gpu/draw.py /tmp/d13k --classes $C --train $BIG --size $SZ"
# each from a clean workspace and an empty cache folder (a phase cut by its limit leaves the workspace as it was)
phase exp5k 90 "git checkout -q .; rm -rf /tmp/vpcache-5k; time VITPIPE_CACHE_DIR=/tmp/vpcache-5k dvc exp run -S data.source=/tmp/d5k -S data.watch=/tmp/d5k -S train.precision=bf16"
phase exp13k 90 "git checkout -q .; rm -rf /tmp/vpcache-13k; time VITPIPE_CACHE_DIR=/tmp/vpcache-13k dvc exp run -S data.source=/tmp/d13k -S data.watch=/tmp/d13k -S train.precision=bf16"
git checkout -q .

phase tests 200 "python -m pytest -q -rfE -m 'not slow' -p no:cacheprovider $TESTS --timeout 120 --junitxml=$O/junit.xml"
note DONE; tar -czf "$O/logs.tgz" -C $L . 2>/dev/null
