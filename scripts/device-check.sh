#!/usr/bin/env bash
# The GPU checks of one lent device session, in one bounded script: environment and NVML, the warm
# template's fork safety with bitsandbytes on CUDA, the calibration probe (CUDA-event timing), and the
# gpu-quick matrix (bitsandbytes 4/8-bit on CUDA, allocator and NVML memory per phase, energy), and its
# time accounting (accounting.json: where the wall time went, the harness share).
# Usage: OUT=dir [PRESET=gpu-quick] [BUDGET=0.5] scripts/device-check.sh   (wheels for missing packages in .whl/)
set -u
OUT=${OUT:?set OUT to an output directory}
PRESET=${PRESET:-gpu-quick}
BUDGET=${BUDGET:-0.5}
mkdir -p "$OUT/run"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    > "$OUT/setup.log" 2>&1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  python3 -c "import torch, transformers, bitsandbytes, peft; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__, 'bitsandbytes', bitsandbytes.__version__, 'peft', peft.__version__)"
} >> "$OUT/setup.log" 2>&1
timeout 60 python3 -m bench.cli env --json > "$OUT/env.json" 2>> "$OUT/setup.log"
timeout 60 python3 -m bench.cli env > "$OUT/env.txt" 2>&1
start=$(date +%s)
timeout 120 python3 -m bench.cli checkpoint --arch "$(python3 -c "import yaml,sys; print(yaml.safe_load(open('bench/presets/$PRESET.yaml'))['model'])")" >> "$OUT/setup.log" 2>&1
echo "checkpoint build: $(( $(date +%s) - start )) s" >> "$OUT/setup.log"
timeout ${RUN_TIMEOUT:-300} python3 -m bench.cli run --preset "$PRESET" --budget "$BUDGET" --out "$OUT/run/$PRESET" --no-live \
  > "$OUT/summary.txt" 2>&1
echo "exit $? after $(( $(date +%s) - start )) s" >> "$OUT/summary.txt"
rm -rf "$OUT/run/$PRESET/claims" "$OUT/run/$PRESET/records.jsonl.lock"
tar -C "$OUT/run/$PRESET" -czf "$OUT/logs.tgz" logs && rm -rf "$OUT/run/$PRESET/logs"
# Where the run's time went (issue 15): the harness's own share of gpu-quick, from run.json.
python3 -c "import json,sys; print(json.dumps(json.load(open(sys.argv[1])).get('time_accounting'), indent=1))" \
  "$OUT/run/$PRESET/run.json" > "$OUT/accounting.json" 2>&1
# Attention values and decode modes (issue 21; docs/attention-and-decode.md): every sdpa pin, kernels-hub flash
# (skipped with its fetch command when the kernel is not cached: the device machine is offline), and dynamic /
# static / compiled decode with the compile timed apart; inference only, bf16, on the preset's model.
ATTN_DIR="$OUT/run/attn-decode"
timeout ${ATTN_TIMEOUT:-240} python3 -m bench.cli run --model "$(python3 -c "import yaml; print(yaml.safe_load(open('bench/presets/$PRESET.yaml'))['model'])")" \
  --dtype bfloat16 --quant none --attn sdpa,sdpa:math,sdpa:flash,sdpa:efficient,sdpa:cudnn,kernels-flash \
  --decode dynamic,static,compiled --grad-ckpt off --workloads prefill,decode --budget "$BUDGET" \
  --out "$ATTN_DIR" --no-live > "$OUT/attn-decode-summary.txt" 2>&1
echo "exit $?" >> "$OUT/attn-decode-summary.txt"
python3 -c "
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    print(r['label'], r['status'], r.get('attn.sdpa_kernel'), r.get('decode.sdpa_kernel'), r.get('decode.compile_s'),
          r.get('decode.compile_cache'), r.get('decode.ttft_s'), r.get('decode.tokens_per_s'), r.get('reason'))
" "$ATTN_DIR/records.jsonl" > "$OUT/attn-decode-records.txt" 2>&1
rm -rf "$ATTN_DIR/claims" "$ATTN_DIR/logs" "$ATTN_DIR/records.jsonl.lock"
