#!/usr/bin/env bash
# saltx GPU benchmark: one short command (< 8 minutes) for a lent GPU machine.
#
#   bash scripts/gpu_bench.sh [OUT_DIR]        (default: $OUT if set, else gpu_bench_out/)
#
# It installs saltx into a fresh venv from wheels only (no network), writes a small
# synthetic dataset, and prints the same kind of table as scripts/bench.py, on the GPU:
#   * GN2 training jets/s at batch 1000: compiled bf16 (the headline), eager bf16, eager
#     fp32 (TF32 matmuls);
#   * MFU: counted FLOPs per jet (scripts/flops.py, useful = valid tokens, and padded) x
#     jets/s over the GPU's dense bf16 peak (saltx.engine.flops table) and over a measured
#     bf16 torch.mm peak;
#   * inference: evaluation jets/s (forward + predictions h5) on the GPU, and ONNX Runtime
#     (CPU, one jet per call) for reference.
# Results: OUT_DIR/gpu_results.json, OUT_DIR/gpu_results.md and OUT_DIR/logs/; the venv,
# data and run directory go to GPU_BENCH_WORK (default ${TMPDIR:-/tmp}/saltx-gpu-bench), so
# that OUT_DIR stays small (it may be the device tool's $OUT).
#
# Environment:
#   WHEELHOUSE   folder of wheels (default: wheelhouse/ in the checkout)
#   PYTHON       interpreter for the venv (default python3; 3.11 like the wheels)
#   GPU_STEPS    timed training steps (default 30), GPU_WARMUP (default 5)
#   GPU_JETS     synthetic jets (default 60000), GPU_EVAL_JETS (default 5000)
#   GPU_BATCH    batch size (default 1000)
#   GPU_BENCH_DRY=1  a functional dry run on the CPU (no CUDA needed; use tiny GPU_STEPS,
#                GPU_JETS, and GPU_BENCH_VENV=.venv to use an existing venv)
#   GPU_BENCH_VENV   use this venv instead of creating GPU_BENCH_WORK/venv
#
# Building the wheelhouse (on a machine with network, same Python minor version and
# platform as the GPU machine, Linux x86_64):
#
#   mkdir -p wheelhouse
#   pip wheel --no-deps --wheel-dir wheelhouse .                      # saltx itself
#   pip download --dest wheelhouse --only-binary=:all: --python-version 3.11 \
#       --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 \
#       hydra-core omegaconf pyyaml h5py rich fsspec onnx onnxruntime atlas-ftag-tools
#   du -sh wheelhouse
#
# Only saltx's run-time imports are installed (saltx itself with --no-deps, then each of
# the modules below that the machine's Python lacks); wandb, tensorboard, optuna, s3fs are
# not needed here. A device call carries at most 64 MiB, so:
#   * torch with CUDA (several GB with its nvidia-* wheels) must already be on the machine:
#     the venv is made with --system-site-packages and uses it; otherwise put the CUDA
#     torch wheels (pip download --dest wheelhouse "torch==2.13.0") into a WHEELHOUSE on
#     the machine's own disk;
#   * numpy, scipy and matplotlib (about 60 MB together) are taken from the machine's
#     Python when present; add them to the download above only if it lacks them.
# The script never touches the network (pip --no-index).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT_DIR=${1:-${OUT:-$ROOT/gpu_bench_out}}
WHEELHOUSE=${WHEELHOUSE:-$ROOT/wheelhouse}
PYTHON=${PYTHON:-python3}
STEPS=${GPU_STEPS:-30}
WARMUP=${GPU_WARMUP:-5}
NJETS=${GPU_JETS:-60000}
EVAL_JETS=${GPU_EVAL_JETS:-5000}
BS=${GPU_BATCH:-1000}
T0=$(date +%s)
mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
LOG=$OUT_DIR/logs
WORK=${GPU_BENCH_WORK:-${TMPDIR:-/tmp}/saltx-gpu-bench}
mkdir -p "$LOG" "$WORK"
say() { echo "[$(( $(date +%s) - T0 ))s] $*"; }

say "GPU: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo 'nvidia-smi not found')"

# ---- install (wheels only) ----------------------------------------------------------------
VENV=${GPU_BENCH_VENV:-$WORK/venv}
if [[ ! -x $VENV/bin/python ]]; then
  "$PYTHON" -m venv --system-site-packages "$VENV"
fi
PY=$VENV/bin/python
PIP=("$PY" -m pip install -q --no-index --find-links "$WHEELHOUSE")
DRY=${GPU_BENCH_DRY:-0}
ACC=gpu DEV=cuda
((DRY)) && { ACC=cpu DEV=cpu; say "dry run on the CPU"; }
if ! ((DRY)) && ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  say "no CUDA torch in the system site-packages: installing torch from $WHEELHOUSE"
  "${PIP[@]}" --ignore-installed torch
fi
"$PY" -c "import torch; print('torch==' + torch.__version__.split('+')[0])" > "$WORK/torch-pin.txt"
NEED=()
for m in numpy:numpy scipy:scipy matplotlib:matplotlib h5py:h5py hydra:hydra-core \
    omegaconf:omegaconf yaml:pyyaml rich:rich fsspec:fsspec onnx:onnx onnxruntime:onnxruntime \
    ftag:atlas-ftag-tools; do
  "$PY" -c "import ${m%%:*}" 2>/dev/null || NEED+=("${m#*:}")
done
if ((${#NEED[@]})) || ! "$PY" -c "import saltx" 2>/dev/null; then
  [[ -d $WHEELHOUSE ]] || { echo "no wheelhouse at $WHEELHOUSE (see the header of $0)" >&2; exit 2; }
fi
if ((${#NEED[@]})); then
  say "installing from $WHEELHOUSE: ${NEED[*]}"
  "${PIP[@]}" -c "$WORK/torch-pin.txt" "${NEED[@]}"
fi
"$PY" -c "import saltx" 2>/dev/null || "${PIP[@]}" --no-deps saltx
((DRY)) || "$PY" -c "import torch, saltx; assert torch.cuda.is_available(), 'no CUDA'; \
print('torch', torch.__version__, 'CUDA', torch.version.cuda, torch.cuda.get_device_name(0))"
say "installed"

# ---- data --------------------------------------------------------------------------------
DATA=$WORK/data
if [[ ! -f $DATA/class_dict.yaml ]]; then
  "$PY" -m saltx.data.synthetic --out "$DATA" --n-jets "$NJETS" > "$LOG/synthetic.log" 2>&1
fi
say "data: $DATA ($NJETS jets)"

# ---- training ----------------------------------------------------------------------------
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4} WANDB_MODE=offline HYDRA_FULL_ERROR=1
train() {  # train NAME ARGS...
  local name=$1; shift
  say "training $name"
  if ! "$PY" "$ROOT/scripts/bench_train.py" --experiment gn2 --file "$DATA/train.h5" \
      --batch-size "$BS" --steps "$STEPS" --warmup "$WARMUP" --accelerator $ACC --num-workers 4 \
      --json "$OUT_DIR/train_$name.json" "$@" > "$LOG/train_$name.log" 2>&1; then
    echo "  FAILED: see $LOG/train_$name.log"; tail -n 5 "$LOG/train_$name.log"
  fi
}
train compiled_bf16 --compile --precision bf16
train eager_bf16 --precision bf16
train eager_fp32 --precision 32

# ---- FLOPs (counted on the CPU; shapes only) and the GPU's bf16 matmul peak ---------------
say "FLOPs per jet"
"$PY" "$ROOT/scripts/flops.py" --experiment gn2 --file "$DATA/train.h5" --batch-size "$BS" \
  --threads 4 --size 1024 --json "$OUT_DIR/flops.json" > "$LOG/flops.log" 2>&1 || echo "  flops FAILED"
((DRY)) || "$PY" - "$OUT_DIR/gpu_peak.json" > "$LOG/gpu_peak.log" 2>&1 <<'PY' || echo "  gpu peak FAILED"
import json, sys, torch
from saltx.engine.flops import peak_flops
dev = torch.device("cuda", 0)
n, best = 8192, 0.0
a = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
b = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
for _ in range(3):
    torch.mm(a, b)
torch.cuda.synchronize()
for _ in range(10):
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record(); torch.mm(a, b); e.record(); torch.cuda.synchronize()
    best = max(best, 2 * n**3 / (s.elapsed_time(e) / 1e3))
json.dump({"name": torch.cuda.get_device_name(0), "mm_bf16_flops": best,
           "table_bf16_flops": peak_flops(dev, "bf16", None)}, open(sys.argv[1], "w"))
PY

# ---- inference ---------------------------------------------------------------------------
say "inference"
RUN=$WORK/run_gn2
rm -rf "$RUN"
"$PY" -m saltx.train +experiment=gn2 "paths.data_dir=$DATA" "paths.output_dir=$RUN" \
  data.batch_size="$BS" trainer.max_steps=2 trainer.limit_val_batches=1 trainer.accelerator=$ACC \
  trainer.progress_bar=false > "$LOG/make_run.log" 2>&1 || echo "  run dir FAILED"
"$PY" "$ROOT/scripts/bench_eval.py" --run-dir "$RUN" --num-test "$EVAL_JETS" --batch-size "$BS" \
  --workers 4 --device $DEV --json "$OUT_DIR/eval.json" > "$LOG/eval.log" 2>&1 || echo "  eval FAILED"
"$PY" "$ROOT/scripts/bench_onnx.py" --run-dir "$RUN" --njets 500 --reps 2 --threads 2 1 \
  --json "$OUT_DIR/onnx.json" > "$LOG/onnx.log" 2>&1 || echo "  onnx FAILED"

# ---- table -------------------------------------------------------------------------------
"$PY" - "$OUT_DIR" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
def load(name):
    p = out / name
    return json.loads(p.read_text()) if p.exists() else {}
fl, peak = load("flops.json").get("model", {}), load("gpu_peak.json")
table_peak, mm_peak = peak.get("table_bf16_flops"), peak.get("mm_bf16_flops")
rows, res = [], {"gpu": peak, "flops": fl}
for name in ("compiled_bf16", "eager_bf16", "eager_fp32"):
    t = load(f"train_{name}.json")
    rate = t.get("jets_per_s")
    res[f"train_{name}"] = t
    rows.append((f"GN2 training, {name.replace('_', ' ')}", rate, "jets/s"))
    for kind in ("useful", "padded"):
        f = fl.get(f"train_{kind}_flops_per_jet")
        if rate and f:
            achieved = f * rate
            rows.append((f"  achieved, {kind} FLOPs", achieved / 1e12, "TFLOP/s"))
            if table_peak:
                rows.append((f"  MFU vs bf16 peak {table_peak / 1e12:.0f} TFLOP/s ({kind})",
                             100 * achieved / table_peak, "%"))
            if mm_peak:
                rows.append((f"  vs measured bf16 mm {mm_peak / 1e12:.0f} TFLOP/s ({kind})",
                             100 * achieved / mm_peak, "%"))
    if t.get("peak_gpu_mb"):
        rows.append(("  peak GPU memory", t["peak_gpu_mb"], "MB"))
ev, ox = load("eval.json"), load("onnx.json")
res.update(eval=ev, onnx=ox)
rows.append(("GN2 evaluation on GPU (forward + predictions h5)", ev.get("jets_per_s"), "jets/s"))
for th, v in (ox.get("jets_per_s") or {}).items():
    rows.append((f"GN2 ONNX Runtime (CPU), 1 jet/call, {th} thread(s)", v, "jets/s"))
md = ["| figure | value | unit |", "|---|---:|---|"]
md += [f"| {a} | {'n/a' if v is None else f'{v:,.2f}'} | {u} |" for a, v, u in rows]
text = f"GPU: {peak.get('name', '?')}\n\n" + "\n".join(md) + "\n"
(out / "gpu_results.md").write_text(text)
(out / "gpu_results.json").write_text(json.dumps(res, indent=1))
print(text)
PY
say "done: $OUT_DIR/gpu_results.md"
