#!/usr/bin/env bash
# Every GPU check of the performance issue in one prepared run (budget: <= 6 minutes on one H100), one JSON out.
#   bash benchmarks/gpu_check.sh [OUT_DIR]      -> OUT_DIR/gpu_check.json (default: $OUT, else .)
# Not yet run on a GPU: the sessions that built it had none. Each step's log lands beside the JSON.
set -uo pipefail
cd "$(dirname "$0")/.."
out_dir=${1:-${OUT:-.}}
mkdir -p "$out_dir"
py=${PYTHON:-python}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1

run() {  # name, timeout (s), command...: keep going when one step fails, record its exit code
    local name=$1 limit=$2; shift 2
    echo "== $name" >&2
    timeout "$limit" "$@" > "$out_dir/$name.log" 2>&1
    echo "$name $?" >> "$out_dir/exit_codes.txt"
}
: > "$out_dir/exit_codes.txt"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$out_dir/gpu.txt" 2>&1
run exactness 120 "$py" -m pytest tests/test_fast_cait.py -q
run talking_heads 90 "$py" benchmarks/talking_heads.py --device cuda
run distill_step 240 "$py" benchmarks/distill_step.py --device cuda --preset paper
"$py" - "$out_dir" <<'PY'
import json, pathlib, platform, sys
import torch, timm
out = pathlib.Path(sys.argv[1])
def last_json(name):
    for line in reversed((out / f"{name}.log").read_text().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
def last_line(name, prefix):
    lines = [l for l in (out / f"{name}.log").read_text().splitlines() if l.startswith(prefix)]
    return lines[-1] if lines else None
result = dict(gpu=(out / "gpu.txt").read_text().strip(), torch=torch.__version__, timm=timm.__version__,
              python=platform.python_version(),
              exit_codes=dict(l.split() for l in (out / "exit_codes.txt").read_text().splitlines()),
              talking_heads=last_json("talking_heads"),
              distill_step=last_line("distill_step", "ratio_vs_timm_compiled"))
(out / "gpu_check.json").write_text(json.dumps(result, indent=1))
print(json.dumps(result, indent=1))
PY
