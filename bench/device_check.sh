#!/usr/bin/env bash
# Everything that needs an NVIDIA GPU, checked in one go (about 8 minutes at most on an H200):
#   1. the tests that exercise CUDA (pytest -k cuda: tests named *cuda* and tests marked cuda),
#   2. the training loop's overhead against a hand-written loop, ResNet-20 on one epoch of
#      synthetic CIFAR-shaped data (bench/epoch_overhead.py),
#   3. 4 local workers against 1 on the momentum and weight-decay stages (bench/workers_speedup.py),
#   4. a short ResNet-20 tune: `tuner run` on a generated study and a generated, learnable
#      CIFAR-shaped npz dataset (storage, data and report in a temporary folder).
# Each part runs under `timeout`; the script ends with one markdown table (part | result |
# seconds | status), whatever failed, to paste into bench/README.md. Exit status 0 when every
# part passed, 1 otherwise, 2 (at once, one line) on a machine without a GPU.
#
#     bash bench/device_check.sh
#
# Creates .venv with `make setup` when it is missing (not counted in the 8 minutes).
set -uo pipefail
cd "$(dirname "$0")/.."

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "device_check: no NVIDIA GPU here (nvidia-smi is missing or sees none); nothing to check." >&2
  exit 2
fi

PY=.venv/bin/python
if [[ ! -x $PY ]]; then
  echo "device_check: no .venv: creating it with make setup" >&2
  if ! timeout 900 make setup; then
    echo "device_check: make setup failed; nothing checked." >&2
    exit 1
  fi
fi
timeout 120 "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 3)'
case $? in
  0) ;;
  3) echo "device_check: torch sees no CUDA device (torch.cuda.is_available() is false); nothing to check." >&2
     exit 2 ;;
  *) echo "device_check: $PY cannot import torch (a stale .venv? rm -rf .venv and rerun); nothing checked." >&2
     exit 1 ;;
esac

WORK=$(mktemp -d "${TMPDIR:-/tmp}/device_check.XXXXXX")
ROWS=()
FAILED=0
START=$SECONDS

# part NAME LIMIT_S HEADLINE_FUNCTION COMMAND...: run COMMAND under `timeout`, its output shown
# and kept in a log; add a table row with HEADLINE_FUNCTION's one line read from that log.
part() {
  local name=$1 limit=$2 headline=$3
  shift 3
  local log="$WORK/part$((${#ROWS[@]} + 1)).log" t0=$SECONDS rc status result
  echo
  echo "=== $name (at most ${limit} s): $*"
  timeout -k 10 "$limit" "$@" 2>&1 | tee "$log"
  rc=${PIPESTATUS[0]}
  case $rc in
    0) status=ok ;;
    124 | 137) status="timed out after ${limit} s" ;;
    5) status="no tests selected" ;;
    *) status="failed (exit $rc)" ;;
  esac
  [[ $rc == 0 ]] || FAILED=1
  result=$("$headline" "$log" 2>/dev/null | head -n 1)
  if [[ -z $result ]]; then  # no headline: the last line it printed says most
    result=$(grep -v '^[[:space:]]*$' "$log" | tail -n 1 | cut -c 1-120)
  fi
  result=${result//|/\/}
  ROWS+=("| $name | ${result:--} | $((SECONDS - t0)) | $status |")
}

headline_pytest() {  # "3 passed, 1 skipped, 250 deselected"
  grep -E '^=*[ ]*[0-9]+ (passed|failed|skipped|deselected|errors?)|no tests ran' "$1" \
    | tail -n 1 | sed -E 's/=//g; s/ in [0-9.]+s.*//; s/^ +//; s/ +$//'
}

headline_epoch() {  # the ResNet-20 row: median epoch seconds of each loop and their ratio
  awk '/^CIFAR-10 ResNet-20/ {printf "tool %s s/epoch, minimal loop %s s, ratio %s (%s steps of %s)\n",
       $(NF-5), $(NF-3), $(NF-1), $(NF-6), $(NF-7)}' "$1"
}

headline_workers() {  # "speed-up of 4 workers over 1: 2.51x" and both spans
  local spans speedup
  spans=$(sed -nE 's/^([0-9]+) worker.*took ([0-9.]+ s).*/\1: \2/p' "$1" | paste -sd ',' - | sed 's/,/, /g')
  speedup=$(sed -nE 's/^speed-up of ([0-9]+) workers over 1: ([0-9.]+x).*/\2 with \1 workers/p' "$1")
  [[ -n $speedup ]] && echo "$speedup (momentum + weight decay, workers $spans)"
}

headline_tune() {  # the end-of-run summary's test accuracy, batch size and LR range
  local acc batch lr
  acc=$(sed -nE 's/^test accuracy +//p' "$1")
  batch=$(sed -nE 's/^batch size +//p' "$1")
  lr=$(sed -nE 's/^LR range at that batch size +//p' "$1")
  [[ -n $acc ]] && echo "test accuracy $acc at batch $batch, LR $lr"
}

print_table() {
  echo
  echo "### $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -n 1)," \
    "$("$PY" -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda)' 2>/dev/null)," \
    "$(nproc) CPU cores, $(date -u '+%Y-%m-%d %H:%M UTC'), $((SECONDS - START)) s in all"
  echo
  echo "| part | result | seconds | status |"
  echo "|---|---|---:|---|"
  printf '%s\n' "${ROWS[@]}"
}
interrupted() {
  ROWS+=("| (interrupted) | the part running then and those after it did not finish | - | interrupted |")
  print_table
  exit 130
}
trap interrupted INT TERM

# --- 1. the tests that exercise CUDA -------------------------------------------------------
# -k matches test names and marker names alike: tests named *cuda* and tests marked `cuda`.
part "CUDA tests" 90 headline_pytest \
  "$PY" -m pytest -q -p no:cacheprovider -k cuda tests

# --- 2. the training loop's overhead, ResNet-20, one epoch of synthetic CIFAR-shaped data ---
part "epoch overhead, ResNet-20" 75 headline_epoch \
  "$PY" bench/epoch_overhead.py --only cifar10 --model resnet20 --device cuda \
  --cifar-images 50000 --runs 3

# --- 3. 4 workers against 1 ----------------------------------------------------------------
part "4 workers vs 1" 165 headline_workers \
  "$PY" bench/workers_speedup.py --workers 4 --epochs 10 --storage-dir "$WORK"

# --- 4. a short ResNet-20 tune -------------------------------------------------------------
# Learnable synthetic data (a coarse colour pattern per class under noise): torchvision's
# FakeData (`name = "fake"`) has random labels, whose flat validation loss the range test
# rightly rejects.
"$PY" - "$WORK/synthetic_cifar.npz" <<'PY'
import sys

import numpy as np

rng = np.random.default_rng(0)
patterns = rng.integers(0, 256, (10, 8, 8, 3)).astype(np.float32)


def split(n: int) -> tuple[np.ndarray, np.ndarray]:
    y = rng.integers(0, 10, n)
    x = patterns[y].repeat(4, axis=1).repeat(4, axis=2)  # N x 32 x 32 x 3
    x = 0.5 * x + 64 + rng.normal(0, 48, x.shape)
    return np.clip(x, 0, 255).astype(np.uint8), y.astype(np.int64)


x, y = split(5000)
x_test, y_test = split(1000)
np.savez(sys.argv[1], x=x, y=y, x_test=x_test, y_test=y_test)
PY
cat >"$WORK/resnet20_check.toml" <<TOML
name = "resnet20_check"
[data]
name = "npz:$WORK/synthetic_cifar.npz"
augment = "cifar"
[model]
name = "resnet20"
[train]
batch_size = 128
device = "cuda"
[lr_range]
num_iters = 200
repeats = 1
[momentum]
values = [0.95, 0.9]
epochs = 3
repeats = 1
[weight_decay]
values = [1e-4, 0.0]
epochs = 3
repeats = 1
[batch_size]
values = [128, 256]
budget_s = 5.0
range_test_iters = 200
[final]
epochs = 5
seeds = [0]
TOML
part "ResNet-20 tune" 120 headline_tune \
  "$PY" -m tuner.cli run "$WORK/resnet20_check.toml" --storage "sqlite:///$WORK/tune.db" \
  --device cuda

trap - INT TERM
print_table
echo
echo "(logs, storage and report in $WORK)"
exit "$FAILED"
