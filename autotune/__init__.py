"""quantcc autotuner: candidate spaces, pruning, verify-then-time, the per-GPU tuning database (write side).

  space.py    search space per (backend, kernel family, M bucket) and the coordinate-descent order
  prune.py    legality and budget rules applied before anything compiles
  verify.py   reference check on fresh data, timing, failures as infinity with a repro line
  aot.py      ahead-of-time compilation of a chunk of candidates in worker processes (the JIT's own cache keys)
  sweep.py    per-case search within a time budget (seeded from the database's nearest winners, ended early
              once converged: --patience), results table, what a database still lacks (untuned)
  tvm_candidates.py  TVM candidate ladders built on the CPU machine (TVM + nvcc), verified and timed on the GPU
  db.py       atomic, locked, merging writes of autotune/db/<gpu>.json (runtime.tuning reads it)

Command line: `python -m autotune {sweep, plan, show, check, space, tvm-build}`."""
