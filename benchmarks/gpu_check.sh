#!/usr/bin/env bash
# GPU check for a lent CUDA machine (no network there), in one call of at most 8 minutes: install
# sctune, run the GPU tests, the side-by-side benchmark against the reference scGPT
# (vs_reference.py: step time, peak CUDA memory, MFU, a real-data pbmc3k epoch) and the
# per-method throughput benchmark, at scGPT whole-human size in bf16.
#
#   1. here (with network), once, from the repository root:
#        bash benchmarks/gpu_check.sh prepare
#      downloads, into .whl/ (git-ignored through .git/info/exclude), cp312 manylinux wheels of the
#      packages sctune needs that the machine's image lacks (pydantic, anndata, scanpy, ...) plus
#      hatchling to build the editable install, at the versions of this checkout's .venv; copies
#      pbmc3k_seurat_labeled.h5ad and scGPT's vocabulary from ../shared/data into .data/ (also
#      git-ignored; 7 MB), since ../shared does not travel; and the reference scgpt 0.2.4 wheel.
#   2. on the GPU machine (device tool: carry [".whl", ".data"], timeout_s 480):
#        bash benchmarks/gpu_check.sh
#      Everything it writes goes to $OUT (or ./gpu_check_out): install.log, pytest.log,
#      vs_reference.{json,log}, throughput.{json,log}. Steps are independent and each has its own
#      time limit (install 80 s, pytest 120 s, vs_reference 220 s, throughput 50 s: 7.8 min at
#      most); a failing step is reported and the next one still runs; the exit status is the
#      number of failed steps.
set -u
cd "$(dirname "$0")/.."

PKGS="pydantic pydantic_core annotated-types typing-inspection anndata scanpy umap-learn pynndescent
session-info2 legacy-api-wrap natsort array-api-compat zarr numcodecs donfig google-crc32c
scverse-misc hatchling pathspec trove-classifiers tqdm"

if [ "${1:-}" = "prepare" ]; then
    grep -qxF "/.whl/" .git/info/exclude 2>/dev/null || echo "/.whl/" >> .git/info/exclude
    mkdir -p .whl
    PY=.venv/bin/python
    for name in $PKGS; do
        ver=$($PY -c "import importlib.metadata as m,sys; print(m.version(sys.argv[1]))" "$name" 2>/dev/null)
        spec="$name${ver:+==$ver}"
        python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
            --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
            --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
            --platform manylinux1_x86_64 --platform any -d .whl "$spec" \
            || echo "prepare: could not download $spec" >&2
    done
    python3 -m pip download -q --no-deps -d .whl scgpt==0.2.4 \
        || echo "prepare: could not download scgpt==0.2.4 (the reference)" >&2
    grep -qxF "/.data/" .git/info/exclude 2>/dev/null || echo "/.data/" >> .git/info/exclude
    mkdir -p .data/vocab
    cp ../shared/data/pbmc3k_seurat_labeled.h5ad .data/ \
        && cp ../shared/data/vocab/scgpt_census_vocab.json .data/vocab/ \
        || echo "prepare: ../shared/data not found; the real-data epoch will be skipped" >&2
    du -sh .whl .data
    exit 0
fi

OUT_DIR="${OUT:-$PWD/gpu_check_out}"
mkdir -p "$OUT_DIR"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
PY=python3
failed=0
step() { echo; echo "=== $* ($(date +%T))"; }

step "environment"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"

step "install sctune (pip install -e ., torch stays as installed) + the reference scgpt"
{
    if [ -d .whl ]; then
        # hatchling first, so the editable build needs no network (no build isolation)
        $PY -m pip install -q --no-index --find-links .whl hatchling pathspec trove-classifiers
        $PY -m pip install --no-index --find-links .whl --no-build-isolation -e ".[test]" \
            || $PY -m pip install --no-index --find-links .whl --no-build-isolation -e .
        $PY -m pip install --no-index --no-deps --find-links .whl scgpt==0.2.4 || true
    else
        $PY -m pip install --no-build-isolation -e .
    fi
} > "$OUT_DIR/install.log" 2>&1
if ! timeout 80 $PY -c "import sctune, pydantic, anndata" 2>>"$OUT_DIR/install.log"; then
    echo "install failed (see install.log); falling back to PYTHONPATH=src"
    tail -5 "$OUT_DIR/install.log"
    export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
    failed=$((failed + 1))
fi
$PY -c "import sctune, torch; print('sctune', sctune.__version__, 'torch', torch.__version__)" || failed=$((failed + 1))

step "pytest -m gpu --run-gpu (fused SDPA kernel, checkpointing, compile, every backbone x precision)"
timeout 120 $PY -m pytest -m gpu --run-gpu -q -p no:cacheprovider tests > "$OUT_DIR/pytest.log" 2>&1
rc=$?
tail -15 "$OUT_DIR/pytest.log"
if [ $rc -eq 5 ]; then
    echo "pytest: no tests marked gpu were collected (tolerated)"
elif [ $rc -ne 0 ]; then
    echo "pytest exited with $rc"
    failed=$((failed + 1))
fi

step "vs_reference: reference scGPT vs sctune, whole-human size, bf16, step 32 x 1200 + pbmc3k epoch at max_seq_len 3001 (the tutorial's)"
[ -d .data ] && export SCTUNE_SHARED_DATA="$PWD/.data"
timeout 220 $PY benchmarks/vs_reference.py --repeats 10 --warmup 3 --max-seq-len 3001 \
    --epoch-methods full gene_encoder_prompt lora --json "$OUT_DIR/vs_reference.json" \
    2>&1 | tee "$OUT_DIR/vs_reference.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || failed=$((failed + 1))

step "throughput: every method, whole-human size, seq 1200, batch 8, bf16"
timeout 50 $PY benchmarks/throughput.py --precision bf16 --repeats 10 --warmup 2 \
    --json "$OUT_DIR/throughput.json" 2>&1 | tee "$OUT_DIR/throughput.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || failed=$((failed + 1))

step "done: $failed failed step(s); files in $OUT_DIR"
exit $failed
