"""python -m bench {run, layers, compare, merge, report}: kernel benchmarks with peers side by side.

  run      time quantcc kernels, fp16 cuBLAS, the read floor and the peers in one run (bench/run.py)
  layers   a Llama-3-8B decoder stack's linears per format, eager vs CUDA-graph replay vs fp16 (bench/layers.py)
  compare  BASE.json NEW.json --fail-above 5: the regression gate (bench/compare.py)
  merge    A.json B.json ... --out DIR: join shard results, rebuild results.md and the plots
  report   RESULTS.json [--out DIR]: rebuild results.md and the plots

`python -m bench COMMAND --help` for each command's options."""
from __future__ import annotations

import os
import sys


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd == "run":
        import torch
        if not torch.cuda.is_available():  # before triton is imported: generated kernels run interpreted
            os.environ.setdefault("TRITON_INTERPRET", "1")
        from .run import main as run_main
        return run_main(rest)
    if cmd == "layers":
        from .layers import main as layers_main
        return layers_main(rest)
    if cmd == "compare":
        from .compare import main_compare
        return main_compare(rest)
    if cmd == "merge":
        from .compare import main_merge
        return main_merge(rest)
    if cmd == "report":
        from .compare import main_report
        return main_report(rest)
    print(f"python -m bench: unknown command {cmd!r}; expected run, layers, compare, merge or report\n\n{__doc__}",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
