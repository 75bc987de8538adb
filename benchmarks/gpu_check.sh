#!/usr/bin/env bash
# One check of a CUDA machine, everything into results/gpu_check.json:
#   - the GPU's name, memory and driver (nvidia-smi);
#   - the whole agent update of the 12m preset at B16 x T64 on 64x64 pixels through the patch encoder
#     (benchmarks/wm_throughput.py --agent): float32 (with a torch.profiler summary), precision=bf16, each
#     also with the RSSM's observe cell compiled, and float32 with that cell replayed as CUDA graphs;
#   - a short pixel training run, `python -m agent train --logdir runs/gpu-check --set train.steps=20000`
#     (on CUDA the default job: dmc:cartpole-swingup from pixels, small preset), with its wall-clock time,
#     its training episodes (the start of the curve, kept from a run cut short too) and its fps/time scalars.
# Without CUDA it prints one line saying so and exits 0. Each step's exit status, wall time and log tail
# are recorded and a failed step does not stop the next one.
#
# On the GPU machine (see ../shared/gpu/README.md): build .gpu/ here once with ../shared/gpu/make-bundle.sh,
# then a device call with carry [".gpu"] and command `bash benchmarks/gpu_check.sh`; the script sources
# .gpu/setup.sh itself (wheels, EGL) unless that was done already. Only $OUT comes back from the device
# machine, so the results file and the logs are copied there when $OUT is set.
#
# Knobs (environment):
#   GPU_CHECK_ONLY      the steps, in the order to run them: "train" and the bench variants float32 (with the
#                       profile), bf16, float32_compile, bf16_compile, float32_cudagraphs (the RSSM cell compiled
#                       with mode reduce-overhead); "bench" stands for all five; default all five, then train.
#                       train_cudagraphs: the same run with the RSSM cell as CUDA graphs (acting between
#                       updates included), in runs/gpu-check-cudagraphs.
#                       A second call with other steps merges into the same results file (parts stay in
#                       runs/gpu-check-parts/).
#   GPU_CHECK_BUDGET    seconds for the whole script: each step is cut to what is left (20 s kept for the
#                       merge) and skipped under 30 s; for a loan whose command is killed at a fixed limit.
#   GPU_CHECK_TRAIN_STEPS (20000), GPU_CHECK_BENCH_TIMEOUT and GPU_CHECK_TRAIN_TIMEOUT (seconds: 400, 1800).
#   GPU_CHECK_TREE      the commit the tree was sent at, kept as tree_commit (the device machine's .git can be
#                       an older snapshot than the working tree it runs).
#   GPU_CHECK_BASELINE  a git revision to time against too (needs the .git directory).
#   GPU_CHECK_DEVICE, GPU_CHECK_PRESET (cuda, 12m; others only to try the script out on a CPU), PYTHON, and
#   for tests GPU_CHECK_RESULT, GPU_CHECK_PARTS, GPU_CHECK_LOGDIR (where the results, the parts, the run go).
set -u
cd "$(dirname "$0")/.." || exit 0
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}

# The first Python whose torch sees a CUDA device: $PYTHON if set, else the project's .venv, else python3
# (on the GPU machine its system Python has torch + CUDA; a .venv there would be a CPU build).
PY=
for candidate in ${PYTHON:-.venv/bin/python python3}; do
  if [ "$("$candidate" -c 'import torch; print(torch.cuda.is_available())' 2>/dev/null)" = "True" ]; then
    PY=$candidate
    break
  fi
done
if [ -z "$PY" ]; then
  echo "gpu_check: no CUDA device (torch.cuda.is_available() is not True for ${PYTHON:-.venv/bin/python python3}); nothing checked."
  exit 0
fi

# Only on a machine with the NVIDIA driver: setup.sh unpacks GL packages into / (a test's fake-CUDA Python
# must not do that here).
if [ -f .gpu/setup.sh ] && command -v nvidia-smi > /dev/null && [[ ":${PYTHONPATH:-}:" != *":/tmp/site:"* ]]; then
  # shellcheck disable=SC1091
  source .gpu/setup.sh || echo "gpu_check: .gpu/setup.sh failed; going on"
fi

RESULT=${GPU_CHECK_RESULT:-results/gpu_check.json}
PARTS=${GPU_CHECK_PARTS:-runs/gpu-check-parts}
LOGDIR=${GPU_CHECK_LOGDIR:-runs/gpu-check}
ONLY=${GPU_CHECK_ONLY:-float32 bf16 float32_compile bf16_compile float32_cudagraphs train}
set -f  # the step names are words, never globs
only=()
for name in $ONLY; do
  if [ "$name" = bench ]; then only+=(float32 bf16 float32_compile bf16_compile float32_cudagraphs); else only+=("$name"); fi
done
set +f
DEVICE=${GPU_CHECK_DEVICE:-cuda}
PRESET=${GPU_CHECK_PRESET:-12m}
TRAIN_STEPS=${GPU_CHECK_TRAIN_STEPS:-20000}
BENCH_TIMEOUT=${GPU_CHECK_BENCH_TIMEOUT:-400}
TRAIN_TIMEOUT=${GPU_CHECK_TRAIN_TIMEOUT:-1800}
BUDGET=${GPU_CHECK_BUDGET:-}  # seconds for the whole script (empty: no cap), counted from its start
if [ -n "$BUDGET" ] && ! [[ $BUDGET =~ ^[0-9]+$ ]]; then
  echo "gpu_check: GPU_CHECK_BUDGET=$BUDGET is not a number of seconds; no budget"
  BUDGET=
fi
LOGDIR=${LOGDIR%/}
mkdir -p "$PARTS" "$(dirname "$RESULT")"

# step NAME TIMEOUT CMD...: run CMD with a time limit, its output in $PARTS/NAME.log, and its exit status
# and wall time in $PARTS/NAME.step (read back by the merge below).
# allowed NAME LIMIT: print the time limit of step NAME, LIMIT cut to what is left of the budget (so that
# the merge and the tar keep theirs); under 30 s, say the step is skipped and return 1. Either way the parts of
# an earlier call under that name go, so nothing stale passes for this call's.
allowed() {
  local name=$1 limit=$2
  rm -f "$PARTS/$name.step" "$PARTS/$name.log" "$PARTS/$name.json"
  if [ -n "$BUDGET" ]; then
    local left=$((BUDGET - SECONDS - 30 - 5))  # 30 s for the merge and the tar, 5 s for timeout's kill
    if [ "$left" -lt 30 ]; then
      echo "gpu_check: $name skipped: $((BUDGET - SECONDS))s left of GPU_CHECK_BUDGET=${BUDGET}s" >&2
      return 1
    fi
    [ "$left" -lt "$limit" ] && limit=$left
  fi
  echo "$limit"
}

# step NAME LIMIT CMD...: run CMD with time limit LIMIT (from allowed), its output in $PARTS/NAME.log, and its
# exit status and wall time in $PARTS/NAME.step (read back by the merge below).
step() {
  local name=$1 limit=$2
  shift 2
  echo "gpu_check: $name: $*"
  local start end rc
  start=$(date +%s.%N)
  timeout --signal=TERM --kill-after=5 "$limit" "$@" > "$PARTS/$name.log" 2>&1
  rc=$?
  end=$(date +%s.%N)
  printf '%s\n%s\n%s\n%s\n' "$rc" "$start" "$end" "$*" > "$PARTS/$name.step"
  tail -n 3 "$PARTS/$name.log"
  echo "gpu_check: $name exited with $rc"
}

step nvidia_smi 60 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

# Bench variants: name -> config overrides (empty: the preset as it is).
declare -A VARIANT=(
  [float32]=""
  [bf16]="precision=bf16"
  [float32_compile]="world_model.rssm.compile=true"
  [bf16_compile]="precision=bf16 world_model.rssm.compile=true"
  [float32_cudagraphs]="world_model.rssm.compile=true world_model.rssm.compile_mode=reduce-overhead"
)
baseline=()
[ -n "${GPU_CHECK_BASELINE:-}" ] && baseline=(--baseline "$GPU_CHECK_BASELINE")
bench=("$PY" -m benchmarks.wm_throughput --agent --devices "$DEVICE" --presets "$PRESET" --obs pixels
       --encoders patch --batch 16 --length 64 --warmup 3 --repeats 10 ${baseline[@]+"${baseline[@]}"})
for name in "${only[@]}"; do  # in the order given, so the most wanted run first on a short loan
  if [ "$name" = train ] || [ "$name" = train_cudagraphs ]; then
    run_dir=$LOGDIR
    graphs=()
    if [ "$name" = train_cudagraphs ]; then
      run_dir=$LOGDIR-cudagraphs
      graphs=(agent.world_model.rssm.compile=true agent.world_model.rssm.compile_mode=reduce-overhead)
    fi
    limit=$(allowed "$name" "$TRAIN_TIMEOUT") || continue
    [ -e "$run_dir" ] && mv "$run_dir" "$run_dir.$(date +%Y%m%d-%H%M%S)"  # train refuses a used logdir
    step "$name" "$limit" "$PY" -m agent train --logdir "$run_dir" --no-progress \
      --set "train.steps=$TRAIN_STEPS" ${graphs[@]+"${graphs[@]}"}
  elif [ -n "${VARIANT[$name]+set}" ]; then
    limit=$(allowed "bench_$name" "$BENCH_TIMEOUT") || continue
    extra=(--out "$PARTS/bench_$name.json")
    [ "$name" = float32 ] && extra+=(--profile)
    # shellcheck disable=SC2206
    overrides=(${VARIANT[$name]})
    [ ${#overrides[@]} -gt 0 ] && extra+=(--set "${overrides[@]}")
    step "bench_$name" "$limit" "${bench[@]}" "${extra[@]}"
  else
    echo "gpu_check: unknown step '$name' (train, train_cudagraphs or one of: ${!VARIANT[*]}); skipped"
  fi
done

# Merge every part present (this call's and an earlier call's) into one results file.
rm -f "$RESULT"  # a failed merge leaves no older results to pass for this call's
"$PY" - "$PARTS" "$RESULT" "$LOGDIR" <<'EOF' || echo "gpu_check: merging the results failed"
import json, os, subprocess, sys, time
from pathlib import Path

parts, result, logdir = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
out = {"written": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "steps": {}, "throughput": {}}
try:
    out["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                       check=True).stdout.strip()
except (OSError, subprocess.SubprocessError):
    out["git_commit"] = None  # the device machine gets the tree without .git
if os.environ.get("GPU_CHECK_TREE"):  # the device's .git can be older than the tree it was sent with
    out["tree_commit"] = os.environ["GPU_CHECK_TREE"]
try:
    import torch
    out["torch"] = {"version": torch.__version__, "cuda": torch.version.cuda,
                    "device_name": torch.cuda.get_device_name(0)}
except Exception as e:  # recorded, not fatal
    out["torch"] = {"error": repr(e)}
for path in sorted(parts.glob("*.step")):
    rc, start, end, cmd = path.read_text().split("\n", 3)
    log = path.with_suffix(".log")
    tail = log.read_text(errors="replace").splitlines()[-20:] if log.exists() else []
    out["steps"][path.stem] = {"rc": int(rc), "ok": rc == "0", "timed_out": rc in ("124", "137"),
                               "wall_s": float(end) - float(start), "command": cmd.strip(),
                               "finished": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(end))),
                               "log_tail": tail}
smi = out["steps"].get("nvidia_smi")
if smi and smi["ok"] and smi["log_tail"]:
    name, memory, driver = (x.strip() for x in (smi["log_tail"][0].split(",") + ["", ""])[:3])
    out["gpu"] = {"name": name, "memory": memory, "driver": driver}
for path in sorted(parts.glob("bench_*.json")):
    out["throughput"][path.stem.removeprefix("bench_")] = json.loads(path.read_text())
for name, run_dir in (("train", logdir), ("train_cudagraphs", Path(f"{logdir}-cudagraphs"))):
    train = out["steps"].get(name)
    if not train:
        continue
    evals = [line for line in train["log_tail"] if line.startswith("final eval return")]
    run = out[name] = {"command": train["command"], "rc": train["rc"], "wall_s": train["wall_s"],
                       "final_eval": evals[-1] if evals else None, "episodes": [], "last": {}}
    metrics = run_dir / "metrics.jsonl"  # the start of the curve: training episodes, even from a run cut short
    for line in (metrics.read_text().splitlines() if metrics.exists() else []):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line cut off when the run was killed
            continue
        if "episode/return" in row and "step" in row:
            run["episodes"].append([row["step"], row["episode/return"]])
    try:  # the loop's own throughput and clock, last logged values
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
        for events in sorted(run_dir.glob("events.out.tfevents.*")):
            acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
            acc.Reload()
            for tag in acc.Tags()["scalars"]:
                if tag.startswith(("fps/", "time/", "train/")):
                    last = acc.Scalars(tag)[-1]
                    run["last"][tag] = [last.step, last.value]
    except Exception as e:  # recorded, not fatal
        run["last"]["error"] = repr(e)
result.write_text(json.dumps(out, indent=1) + "\n")
print(f"gpu_check: wrote {result}")
EOF

if [ -n "${OUT:-}" ] && [ -d "$OUT" ]; then  # the device tool returns only what is under $OUT
  cp "$RESULT" "$OUT/" 2>/dev/null
  # at most 8 files come back: the parts go as one tar
  runs=()
  for run_dir in "$LOGDIR" "$LOGDIR-cudagraphs"; do
    [ -d "$run_dir" ] && runs+=(-C "$(cd "$(dirname "$run_dir")" && pwd)" "$(basename "$run_dir")")
  done
  # logs and curves only: a replay or a checkpoint would push the file past what comes back (16 MiB)
  tar -czf "$OUT/gpu-check-parts.tgz" --exclude=replay --exclude=checkpoint.pt \
    -C "$(dirname "$PARTS")" "$(basename "$PARTS")" ${runs[@]+"${runs[@]}"}
fi
exit 0
