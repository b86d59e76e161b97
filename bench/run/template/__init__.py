"""The warm template: the modules the forkserver preloads before any cell forks from it (bench.run.node
names them). This `__init__` runs whenever any of them is imported, so it imports nothing and does nothing.

In the order the forkserver imports them:
    gc_pause   the cyclic collector paused while the libraries import
    quiet      (first in either template) library output to the template log; a thread-safe tqdm
    base       torch, transformers, model code and the cell body: runs without quantized cells
    kbit       base plus bitsandbytes (under an NVML capability patch) and peft: runs with k-bit cells
    quant      after kbit: the on-the-fly quantizers' libraries (torchao, hqq, quanto) and transformers'
               quantizer modules, for runs with cells of those quantizations
    gc_freeze  collect once, freeze what is left, resume the collector
"""
