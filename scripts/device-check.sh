#!/usr/bin/env bash
# The GPU checks of one lent device session, in one bounded script with a flat output folder:
#   - environment and NVML (env.json, env.txt, setup.log);
#   - the gpu-quick matrix: the warm template's fork safety with bitsandbytes on CUDA, the calibration probe
#     (CUDA-event timing), bitsandbytes 4/8-bit on CUDA, allocator and NVML memory per phase, energy, and its
#     time accounting (gpu-quick-*: run.json, records.jsonl, summary.txt, accounting.json, logs.tgz);
#   - `loadbench ab` on two gpu-quick cells: an A/A (same interpreter on both sides) and a new side 10 %
#     slower in compute through its environment (tests/slowdown): ab-aa.*, ab-compute.*.
# Usage: OUT=dir [PRESET=gpu-quick] [BUDGET=0.5] scripts/device-check.sh   (wheels for missing packages in .whl/)
set -u
OUT=${OUT:?set OUT to an output directory}
PRESET=${PRESET:-gpu-quick}
BUDGET=${BUDGET:-0.5}
mkdir -p "$OUT"
WORK=$(mktemp -d)
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

# flat NAME DIR: a run directory's files as $OUT/NAME-<file>, its logs as one archive.
flat() {
  local name=$1 dir=$2 f
  for f in run.json records.jsonl ab.md ab.json report.md; do
    [ -f "$dir/$f" ] && cp "$dir/$f" "$OUT/$name-$f"
  done
  [ -d "$dir/logs" ] && tar -C "$dir" -czf "$OUT/$name-logs.tgz" logs $( [ -d "$dir/sides" ] && echo sides )
}

start=$(date +%s)
timeout 120 python3 -m bench.cli checkpoint --arch "$(python3 -c "import yaml,sys; print(yaml.safe_load(open('bench/presets/$PRESET.yaml'))['model'])")" >> "$OUT/setup.log" 2>&1
echo "checkpoint build: $(( $(date +%s) - start )) s" >> "$OUT/setup.log"
timeout ${RUN_TIMEOUT:-300} python3 -m bench.cli run --preset "$PRESET" --budget "$BUDGET" --out "$WORK/$PRESET" --no-live \
  > "$OUT/$PRESET-summary.txt" 2>&1
echo "exit $? after $(( $(date +%s) - start )) s" >> "$OUT/$PRESET-summary.txt"
flat "$PRESET" "$WORK/$PRESET"
# Where the run's time went (issue 15): the harness's own share of gpu-quick, from run.json.
python3 -c "import json,sys; print(json.dumps(json.load(open(sys.argv[1])).get('time_accounting'), indent=1))" \
  "$WORK/$PRESET/run.json" > "$OUT/$PRESET-accounting.json" 2>&1

# The A/B gate on the GPU (issue 20 item 7): two cells, up to 8 rounds each side.
AB_CELLS=(--preset "$PRESET" --dtype bfloat16 --quant none,nf4 --attn sdpa --grad-ckpt off --rounds 8)
start=$(date +%s)
timeout ${AB_TIMEOUT:-240} python3 -m bench.cli ab --base python3 --new python3 "${AB_CELLS[@]}" \
  --out "$WORK/ab-aa" > /dev/null 2> "$OUT/ab-aa-stderr.txt"
echo "exit $? after $(( $(date +%s) - start )) s" >> "$OUT/ab-aa-stderr.txt"
flat ab-aa "$WORK/ab-aa"
start=$(date +%s)
timeout ${AB_TIMEOUT:-240} python3 -m bench.cli ab --base python3 --new python3 "${AB_CELLS[@]}" \
  --new-env "PYTHONPATH=$PWD/tests/slowdown:$PYTHONPATH" --new-env LOADBENCH_SLOWDOWN=compute=0.10 \
  --out "$WORK/ab-compute" > /dev/null 2> "$OUT/ab-compute-stderr.txt"
echo "exit $? after $(( $(date +%s) - start )) s" >> "$OUT/ab-compute-stderr.txt"
flat ab-compute "$WORK/ab-compute"

# Issue 21: the on-the-fly quantizers on the GPU beside nf4 (torchao int8/int4/float8, HQQ, quanto,
# FineGrainedFP8): which load, their records, quality and footprints (docs/quantization.md lists what was
# verified on the CPU only). Their wheels go in .whl/ with the others: pip download --no-deps torchao hqq
# optimum-quanto (and hqq's einops / termcolor, quanto's ninja if the image lacks them).
QUANT_MODEL=$(python3 -c "import yaml; print(yaml.safe_load(open('bench/presets/$PRESET.yaml'))['model'])")
timeout ${QUANT_TIMEOUT:-240} python3 -m bench.cli run --model "$QUANT_MODEL" --dtype bfloat16 --attn sdpa \
  --quant none,nf4,torchao-int8,torchao-int4,torchao-float8,hqq-4bit,quanto-int8,quanto-int4,fp8 \
  --budget "$BUDGET" --min-samples 3 --out "$WORK/quant" --no-live > "$OUT/quant-summary.txt" 2>&1
echo "exit $?" >> "$OUT/quant-summary.txt"
flat quant "$WORK/quant"

# Attention values and decode modes (issue 21; docs/attention-and-decode.md): every sdpa pin, kernels-hub flash
# (skipped with its fetch command when the kernel is not cached: the device machine is offline), and dynamic /
# static / compiled decode with the compile timed apart; inference only, bf16, on the preset's model.
timeout ${ATTN_TIMEOUT:-240} python3 -m bench.cli run --model "$QUANT_MODEL" \
  --dtype bfloat16 --quant none --attn sdpa,sdpa:math,sdpa:flash,sdpa:efficient,sdpa:cudnn,kernels-flash \
  --decode dynamic,static,compiled --grad-ckpt off --workloads prefill,decode --budget "$BUDGET" \
  --out "$WORK/attn-decode" --no-live > "$OUT/attn-decode-summary.txt" 2>&1
echo "exit $?" >> "$OUT/attn-decode-summary.txt"
flat attn-decode "$WORK/attn-decode"
rm -rf "$WORK"
