#!/usr/bin/env bash
# GPU check: every question about a GPU in one run (benchmarks/gpu_check.py runs the parts), each part timed,
# one JSON file of results (WORK/gpu_check.json) and a printed table; target: under 8 minutes on one H100.
#   options      PGD-AT, one epoch: the fp32 eager baseline, then each option alone (bf16, channels_last,
#                --compile, --stream), then the defaults (bf16 + channels_last on CUDA); images/s against it
#   overhead     fastrobust against a hand-written PGD-10 loop on the same device (engine/hand ratio)
#   methods      pgd, fgsm-rs, n-fgsm, free, trades, mart, fat, gaat, mdeat (at r = 4, a later epoch's level)
#   syncs        host-device syncs inside an iteration (torch.cuda.set_sync_debug_mode) for pgd, fat, gaat
#   distributed  2 processes with torchrun (NCCL) when 2 GPUs are there, skipped with a message on one
#   agreement    the same fixed-seed fp32 run on the CPU and on the GPU: test accuracies within 3 points
#   autoattack   fastrobust eval --attacks aa of the baseline model on 500 test images
# Every training row has its peak memory (summary.json: peak_memory_mb).
#
#   benchmarks/gpu_check.sh                  # on a CUDA machine (fails with a message without one)
#   benchmarks/gpu_check.sh --dry-run        # every part on the CPU: tiny subset, narrow model (CI)
#   benchmarks/gpu_check.sh --data DIR       # DIR: an image folder (train/, test/), the official
#                                            # CIFAR-10 pickles (cifar-10-batches-py), or the JPEG
#                                            # copy's cifar10-jpeg.tar.gz (unpacked into --work)
#
# Options: --data PATH (default ../shared/datasets/cifar10-jpeg/cifar10-jpeg.tar.gz, next to the
# project), --work DIR (runs, unpacked data, gpu_check.json; default ./gpu-check, --dry-run: a temporary
# folder), --methods "pgd gaat ...", --parts "options methods ...", --train-subset N (training images per run
# on the GPU, default 10000). Environment: PYTHON (default python); FASTROBUST_DRY_COMPILE=1 makes the dry
# run's --compile use inductor (minutes on the CPU) instead of tracing with aot_eager. Nothing is downloaded.
#
# Images per second = training images / the last epoch's training-loop seconds (metrics.jsonl, without
# validation and test); each method does its own number of passes per image (printed next to it). CIFAR-10
# accuracies after one epoch on a subset mean little; this checks that the GPU paths run, and how fast.
set -euo pipefail

usage() { sed -n '2,30p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "gpu_check.sh: error: $*" >&2; exit 2; }

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
PYTHON="${PYTHON:-python}"
DRY=0
DATA=""
WORK=""
METHODS="pgd fgsm-rs n-fgsm free trades mart fat gaat mdeat"
PARTS="options overhead methods syncs distributed agreement autoattack"
TRAIN_SUBSET=10000
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY=1 ;;
        --data) [ $# -ge 2 ] || die "--data needs a path"; DATA="$2"; shift ;;
        --work) [ $# -ge 2 ] || die "--work needs a folder"; WORK="$2"; shift ;;
        --methods) [ $# -ge 2 ] || die "--methods needs a list such as \"pgd mdeat\""; METHODS="$2"; shift ;;
        --parts) [ $# -ge 2 ] || die "--parts needs a list such as \"options methods\""; PARTS="$2"; shift ;;
        --train-subset) [ $# -ge 2 ] || die "--train-subset needs a number"; TRAIN_SUBSET="$2"; shift ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown argument $1 (see benchmarks/gpu_check.sh --help)" ;;
    esac
    shift
done
[ -n "$DATA" ] || DATA="$ROOT/../shared/datasets/cifar10-jpeg/cifar10-jpeg.tar.gz"
[ -e "$DATA" ] || die "no CIFAR-10 at $DATA: pass --data with an image folder (train/, test/), the folder of the official pickles (cifar-10-batches-py) or cifar10-jpeg.tar.gz"
FR=("$PYTHON" -m fastrobust)
"${FR[@]}" --version >/dev/null 2>&1 || die "'$PYTHON -m fastrobust' does not run: install fastrobust (pip install -e .) or set PYTHON"

if [ "$DRY" = 1 ]; then
    if [ -z "$WORK" ]; then WORK="$(mktemp -d "${TMPDIR:-/tmp}/gpu-check-dry.XXXXXX")"; CLEAN="$WORK"; fi
    DEVICE=cpu
    export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
    VAL=32
    echo "gpu_check.sh --dry-run: every part on the CPU (tiny subset, width-8 model); numbers are not GPU figures"
else
    [ -n "$WORK" ] || WORK="$PWD/gpu-check"
    "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
        || die "no CUDA GPU visible to torch: this check needs one (benchmarks/gpu_check.sh --dry-run checks the script on the CPU)"
    DEVICE=cuda
    VAL=1000
    "$PYTHON" -c "import torch; print('GPU:', torch.cuda.get_device_name(0), 'x', torch.cuda.device_count(), '| torch', torch.__version__)"
fi
trap 'if [ -n "${CLEAN:-}" ]; then rm -rf "$CLEAN"; fi' EXIT
mkdir -p "$WORK"
START=$SECONDS

# ---- data: an image folder, the official pickles, or the JPEG copy's archive (unpacked once)
if [ -d "$DATA/train" ] && [ -d "$DATA/test" ]; then
    DATASET=(--dataset imagefolder --data-dir "$DATA"); FOLDER="$DATA"
elif [ -f "$DATA/data_batch_1" ] || [ -f "$DATA/cifar-10-batches-py/data_batch_1" ]; then
    DATASET=(--dataset cifar10 --data-dir "$DATA"); FOLDER=""
elif [ -f "$DATA" ] && [[ "$DATA" == *.tar.gz || "$DATA" == *.tgz ]]; then
    FOLDER="$WORK/cifar10-jpeg"
    if [ ! -f "$FOLDER/.unpacked" ]; then
        echo "unpacking $DATA into $FOLDER$([ "$DRY" = 1 ] && echo ' (16 training and 4 test images per class)')"
        rm -rf "$FOLDER"
        "$PYTHON" - "$DATA" "$FOLDER" "$DRY" <<'EOF'
import sys, tarfile
from pathlib import Path
archive, dest, dry = sys.argv[1], Path(sys.argv[2]), sys.argv[3] == "1"
def wanted(name):   # train/<class>/NNNN.jpg, test/<class>/NNNN.jpg
    parts = name.split("/")
    if len(parts) != 3 or parts[0] not in ("train", "test"):
        return False
    return not dry or int(parts[2].split(".")[0]) < (16 if parts[0] == "train" else 4)
with tarfile.open(archive, "r|gz") as tar:
    for member in tar:
        if member.isfile() and wanted(member.name):
            tar.extract(member, dest, filter="data")
if not (dest / "train").is_dir() or not (dest / "test").is_dir():
    sys.exit(f"gpu_check.sh: error: {archive} holds no train/<class>/ and test/<class>/ images")
(dest / ".unpacked").touch()
EOF
    fi
    DATASET=(--dataset imagefolder --data-dir "$FOLDER")
else
    die "$DATA is not an image folder (train/, test/), a folder of the CIFAR-10 pickles or a .tar.gz archive"
fi
# decode (and cache) the data once, outside the timed runs; its number of training images sets N_TRAIN
N_IMAGES=$("$PYTHON" - "${DATASET[@]}" <<'EOF'
import sys
from fastrobust.data import load_dataset
args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
data = load_dataset(args["--dataset"], args["--data-dir"], progress=False)
print(f"data: {args['--dataset']} {args['--data-dir']}: {len(data.train.y)} training and {len(data.test.y)} test "
      f"images", file=sys.stderr)
print(len(data.train.y))
EOF
) || die "cannot load the data set (${DATASET[*]})"
N_TRAIN=$((N_IMAGES - VAL))
[ "$DRY" = 1 ] || [ "$N_TRAIN" -le "$TRAIN_SUBSET" ] || N_TRAIN=$TRAIN_SUBSET
echo "data ready after $((SECONDS - START)) s; $N_TRAIN training images per epoch"

DRIVER=(--dataset "${DATASET[1]}" --data-dir "${DATASET[3]}" --work "$WORK" --device "$DEVICE" \
        --methods "$METHODS" --parts "$PARTS" --train-subset "$TRAIN_SUBSET")
[ -z "$FOLDER" ] || DRIVER+=(--folder "$FOLDER")
[ "$DRY" = 0 ] || DRIVER+=(--dry-run)
status=0
"$PYTHON" "$HERE/gpu_check.py" "${DRIVER[@]}" || status=$?
TOTAL=$((SECONDS - START))
echo "gpu_check.sh: total $TOTAL s with the data (target on one H100: 480 s; ratio $(awk "BEGIN {printf \"%.2f\", $TOTAL / 480}")); results in $WORK/gpu_check.json"
exit $status
