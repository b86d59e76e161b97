"""run stage: runs a plan's cells, each in an isolated process, and stores one record per cell; never
imports analysis.

Sub-stages:
    session      one `loadbench run`: plan, open the store, start an executor, run, summarise
    ab/          one `loadbench ab`: two sides (interpreter + environment), each a process with its own
                 template serving cells (side, sides, protocol), rounds in a seeded order (schedule, session)
    executors    executor (the protocol, local), ray_executor, runner (one process per cell: timeouts,
                 Ctrl-C), shards (which cells a host runs), memory_store (records kept in memory by a
                 process that runs cells for another's store: a Ray node, an ab side)
    node         a node's set-up: template/ (the warm forkserver, package), weights (random weights
                 built at run start), the quality reference and calibration
    worker       worker_entry (where a worker process starts), messages (the typed pipe protocol),
                 faults (test-only fault injection)
    store        store (run.json, records.jsonl), records (one line), compose (the one record composer),
                 claims (leases on cells), ownership (which records belong, which cells are missing)
    progress     progress (the live display), accounting (where the run's time went)
"""
