#!/usr/bin/env bash
# The offline reproduction of the paper's finding (README "Results"), end to end:
#   bash experiments/offline_paper.sh      (or: make offline-paper)
# 1. base models on the 9 STS tasks (paper Table 3; all-MiniLM-L6-v2 as the reference row),
# 2. SmolLM2-135M and Gemma-3-270M fine-tuned with and without hard negatives (Tables 2 and 6),
# 3. embedft.report over both sweeps -> experiments/results/offline_paper/.
# Every step's wall time, the machine and the git commit measured (with whether tracked files
# differed from it) are written to experiments/results/offline_paper/run_info.json.
set -euo pipefail
cd "$(dirname "$0")/.."
# The code this run measures, read before any step: HEAD and whether tracked files differ from it.
if COMMIT=$(git rev-parse HEAD 2>/dev/null); then
  if [ -n "$(git status --porcelain --untracked-files=no)" ]; then DIRTY=true; else DIRTY=false; fi
else
  COMMIT=unknown DIRTY=unknown
fi
PY=${PY:-.venv/bin/python}
OUT=experiments/results/offline_paper
# MODELS=smollm2 runs a subset of the decoders (the default is the whole experiment).
MODELS=${MODELS:-smollm2,gemma3_270m}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=disabled TOKENIZERS_PARALLELISM=false
mkdir -p "$OUT"
[ -f data/nli_triplets.csv ] || "$PY" -m embedft.prepare_nli
rm -rf multirun/offline_base multirun/offline_finetune

declare -A WALL
step() {  # step NAME COMMAND...: run it and record its wall time; a failed job is reported, not fatal
  local name=$1; shift
  local t0=$SECONDS
  "$@" || echo "step $name: some jobs failed (see their results.json; the report lists them)"
  WALL[$name]=$((SECONDS - t0))
}
step base_decoders "$PY" -m embedft.evaluate -m model="$MODELS" model.dtype=bfloat16 model.max_length=64 \
  hydra.sweep.dir=multirun/offline_base/decoders
step base_minilm "$PY" -m embedft.evaluate -m model=minilm hydra.sweep.dir=multirun/offline_base/minilm
step finetune "$PY" -m embedft.run -m experiment=offline_finetune model="$MODELS"
step report "$PY" -m embedft.report "dirs=[multirun/offline_base,multirun/offline_finetune]" "out=$OUT"
# Keep every job's results.json, config.yaml and training metrics next to the report (the run dirs
# also hold checkpoints and stay out of git): `python -m embedft.report dirs=$OUT/jobs out=DIR` rebuilds it.
rm -rf "$OUT/jobs"
for job in multirun/offline_base/*/*/ multirun/offline_finetune/*/; do
  [ -f "$job/results.json" ] || continue
  dest="$OUT/jobs/${job#multirun/}"
  mkdir -p "$dest"
  cp "$job/results.json" "$dest/"
  for f in config.yaml csv/metrics.csv; do [ -f "$job/$f" ] && cp "$job/$f" "$dest/"; done
done

MODELS=$MODELS COMMIT=$COMMIT DIRTY=$DIRTY "$PY" - "$OUT/run_info.json" "${WALL[base_decoders]}" "${WALL[base_minilm]}" "${WALL[finetune]}" "${WALL[report]}" <<'PYEOF'
import json, os, platform, sys
import torch
path, *walls = sys.argv[1:]
names = ["base_decoders", "base_minilm", "finetune", "report"]
models = os.environ.get("MODELS", "smollm2,gemma3_270m")
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
info = {
    "decoders": models.split(","),
    "git_commit": os.environ["COMMIT"],
    "git_dirty": {"true": True, "false": False}.get(os.environ["DIRTY"], "unknown"),
    "wall_time_s": dict(zip(names, map(int, walls))),
    "total_wall_time_s": sum(map(int, walls)),
    "machine": {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                "python": platform.python_version(), "torch": torch.__version__},
}
with open(path + ".tmp", "w") as f:
    json.dump(info, f, indent=2)
os.replace(path + ".tmp", path)
print(json.dumps(info, indent=2))
PYEOF
