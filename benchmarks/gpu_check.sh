#!/usr/bin/env bash
# GPU readiness check: one epoch of CIFAR-10 with pgd, mdeat, gaat and free (PreActResNet-18), with
# --amp bf16 --channels-last, again with --compile, again with the streaming loader (--stream, when
# this fastrobust has it), then `fastrobust eval` with AutoAttack on 500 test images; prints images
# per second for each and the total time (target: within 8 minutes on one H100/H200).
#
#   benchmarks/gpu_check.sh                  # on a CUDA machine (fails with a message without one)
#   benchmarks/gpu_check.sh --dry-run        # the same steps on the CPU: tiny subset, narrow model
#   benchmarks/gpu_check.sh --data DIR       # DIR: an image folder (train/, test/), the official
#                                            # CIFAR-10 pickles (cifar-10-batches-py), or the JPEG
#                                            # copy's cifar10-jpeg.tar.gz (unpacked into --work)
#
# Options: --data PATH (default ../shared/datasets/cifar10-jpeg/cifar10-jpeg.tar.gz, next to the
# project), --work DIR (runs and unpacked data; default ./gpu-check, --dry-run: a temporary folder),
# --methods "pgd mdeat gaat free". Environment: PYTHON (default python); FASTROBUST_DRY_COMPILE=1
# makes --dry-run compile too (minutes per method on the CPU). Nothing is downloaded.
#
# Images per second of a training run = training images of the epoch / its training-loop seconds
# (summary.json: train_seconds, without the per-epoch validation and the final test); each method
# does its own number of passes per image (printed next to it: pgd 11, free 4, mdeat 1 in its first
# epoch, gaat fewer than pgd). For the evaluation: images / eval.json's seconds. CIFAR-10 (JPEG copy)
# accuracies after one epoch mean nothing; this checks that the GPU paths run and how fast. With
# --compile the one epoch's seconds include compiling the model (once per process).
set -euo pipefail

usage() { sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "gpu_check.sh: error: $*" >&2; exit 2; }

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
PYTHON="${PYTHON:-python}"
DRY=0
DATA=""
WORK=""
METHODS="pgd mdeat gaat free"
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY=1 ;;
        --data) [ $# -ge 2 ] || die "--data needs a path"; DATA="$2"; shift ;;
        --work) [ $# -ge 2 ] || die "--work needs a folder"; WORK="$2"; shift ;;
        --methods) [ $# -ge 2 ] || die "--methods needs a list such as \"pgd mdeat\""; METHODS="$2"; shift ;;
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
    # tiny: 16 training and 4 test images per class, PreActResNet-18 at width 8, short attacks
    SIZE=(--val-size 32 --test-subset 40 --batch-size 32 --model-opt width=8 --val-steps 2 --test-steps 2)
    AA_N=20
    echo "gpu_check.sh --dry-run: the GPU check's steps on the CPU (tiny subset, width-8 model); numbers are not GPU figures"
else
    [ -n "$WORK" ] || WORK="$PWD/gpu-check"
    "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
        || die "no CUDA GPU visible to torch: this check needs one (benchmarks/gpu_check.sh --dry-run checks the script on the CPU)"
    DEVICE=cuda
    SIZE=(--val-size 1000 --test-subset 1000)
    AA_N=500
    "$PYTHON" -c "import torch; print('GPU:', torch.cuda.get_device_name(0), '| torch', torch.__version__)"
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
VAL=${SIZE[1]}
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

COMMON=(--epochs 1 --device "$DEVICE" --amp bf16 --channels-last --no-progress "${SIZE[@]}" "${DATASET[@]}")
RESULTS="$WORK/results.tsv"
: > "$RESULTS"

speed() {   # speed LABEL METHOD RUN_DIR: one line of RESULTS from the run's summary.json
    "$PYTHON" - "$1" "$2" "$3" "$N_TRAIN" >> "$RESULTS" <<'EOF'
import json, sys
label, method, run, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
s = json.load(open(f"{run}/summary.json"))
print(f"{label}\t{method}\t{n / s['train_seconds']:.0f}\t{s['passes_per_example']:.2f}\t{s['train_seconds']:.1f}")
EOF
}

train_all() {   # train_all LABEL EXTRA_FLAGS...
    local label="$1"; shift
    for m in $METHODS; do
        local run="$WORK/runs/$label-$m"
        rm -rf "$run"
        local t=$SECONDS
        echo "== train $m ($label): fastrobust train --method $m ${COMMON[*]} $* --out $run"
        "${FR[@]}" train --method "$m" "${COMMON[@]}" "$@" --out "$run" | grep -E "^(training|done)" || true
        [ -f "$run/summary.json" ] || die "training $m ($label) wrote no $run/summary.json (see $run/train.log)"
        speed "$label" "$m" "$run"
        echo "   $((SECONDS - t)) s wall (startup, data, validation and test included)"
    done
}

train_all "bf16+channels-last"
if [ "$DRY" = 1 ]; then
    # torch.compile works on the CPU, but takes about 2 minutes per method on 2 cores, with another backend than
    # the GPU's (C++ instead of Triton): the dry run leaves it out, and FASTROBUST_DRY_COMPILE=1 puts it back
    if [ "${FASTROBUST_DRY_COMPILE:-0}" = 1 ]; then
        train_all "+compile" --compile
    else
        echo "--compile: skipped in the dry run (minutes per method on the CPU; FASTROBUST_DRY_COMPILE=1 runs it)"
        printf '+compile\t(skipped in the dry run)\t-\t-\t-\n' >> "$RESULTS"
    fi
else
    train_all "+compile" --compile
fi
if "${FR[@]}" train --help 2>/dev/null | grep -q -- "--stream"; then
    if [ -n "$FOLDER" ]; then
        train_all "+stream" --stream
    else
        echo "streaming loader: skipped (it reads image folders; pass --data with the JPEG copy or an image folder)"
        printf '+stream\t(skipped: not an image folder)\t-\t-\t-\n' >> "$RESULTS"
    fi
else
    echo "streaming loader: skipped: this fastrobust has no --stream option yet"
    printf '+stream\t(skipped: no --stream in this fastrobust)\t-\t-\t-\n' >> "$RESULTS"
fi

# ---- AutoAttack on the PGD-AT model (the first method's if pgd is not run)
target="pgd"; [[ " $METHODS " == *" pgd "* ]] || target=${METHODS%% *}
run="$WORK/runs/bf16+channels-last-$target"
echo "== fastrobust eval $run --attacks aa --test-subset $AA_N --device $DEVICE"
"${FR[@]}" eval "$run" --attacks aa --test-subset "$AA_N" --device "$DEVICE" --no-progress --out "$WORK/aa-eval.json" \
    | grep -E -i "autoattack|robust|clean" || true
[ -f "$WORK/aa-eval.json" ] || die "fastrobust eval wrote no $WORK/aa-eval.json"
"$PYTHON" - "$WORK/aa-eval.json" "$target" >> "$RESULTS" <<'EOF'
import json, sys
e = json.load(open(sys.argv[1]))
print(f"eval AutoAttack\t{sys.argv[2]}\t{e['n'] / e['seconds']:.0f}\t-\t{e['seconds']:.1f}")
EOF

TOTAL=$((SECONDS - START))
echo
echo "gpu_check.sh results ($([ "$DRY" = 1 ] && echo 'DRY RUN on the CPU, not GPU figures' || echo "$DEVICE")): $N_TRAIN training images per epoch"
"$PYTHON" - "$RESULTS" <<'EOF'
import sys
rows = [line.rstrip("\n").split("\t") for line in open(sys.argv[1]) if line.strip()]
head = ("step", "method", "images/s", "passes/image", "seconds")
widths = [max(len(r[i]) for r in [head, *rows]) for i in range(5)]
for r in [head, *rows]:
    print("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
EOF
echo "total $TOTAL s (target on one H100/H200: 480 s; ratio $(awk "BEGIN {printf \"%.2f\", $TOTAL / 480}"))"
