"""plan stage: from what the user asked to a plan of cells, each "run" or "skip: <reason>"; never builds
weights or runs a model.

Sub-stages, in the order a plan is made:
    spec         the matrix spec from YAML, a preset, a recipe or CLI flags, checked axis by axis
    models       the model resolver (local, HF cache, hub config, preset) and its fingerprint
    checkpoints  synthetic checkpoints from an architecture preset; synthetic: their files and cache key
    host         capabilities (the probe), host_facts (what it found and which knob values can run),
                 gpu_facts (NVML), env_render (`loadbench env`)
    cells        one configuration and its stable id; matrix and rules expand a spec and skip cells;
                 decode_modes: when a decode mode (static, compiled) can run
    estimate/    the analytical peak memory per phase (package); fit: the fit check built on it
    planning     spec -> resolved model -> cells -> rules -> plan
"""
