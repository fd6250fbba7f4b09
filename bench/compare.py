"""The regression gate and the results plumbing.

    python -m bench compare BASE.json NEW.json [--fail-above PCT] [--include-peers]
        exits 1 naming every quantcc case whose median time grew by more than PCT % (default 5), or that
        passed its correctness check in BASE and does not in NEW; exits 2 when the files come from different
        GPUs (times from two GPUs say nothing about a change), 0 otherwise.
    python -m bench merge A.json B.json ... --out DIR [--no-plots]
        joins shard results (same GPU only; a later file's case replaces an earlier one with the same id)
        and rebuilds results.md and the plots.
    python -m bench report RESULTS.json [--out DIR]
        rebuilds results.md and the plots from one results.json."""
from __future__ import annotations

import argparse
from pathlib import Path

from .report import load_results, write_outputs


def _gpu(doc: dict) -> str | None:
    return doc["header"].get("gpu")


def compare(base: dict, new: dict, fail_above: float, include_peers: bool = False) -> tuple[list[str], list[str]]:
    """(failures, notes): failures name the cases slower by more than fail_above % or newly incorrect."""
    kinds = ("quantcc", "peer") if include_peers else ("quantcc",)
    old = {c["id"]: c for c in base["cases"] if c["kind"] in kinds}
    cur = {c["id"]: c for c in new["cases"] if c["kind"] in kinds}
    failures, notes, changes = [], [], []
    gone = [cid for cid, b in old.items() if cid not in cur and b["status"] == "ok"]
    for cid, b in old.items():
        n = cur.get(cid)
        if n is None:
            continue
        if b["status"] == "ok" and n["status"] in ("FAILED", "error"):
            failures.append(f"{cid}: passed in BASE, {n['status']} in NEW ({n.get('reason')})")
            continue
        if b["status"] == "ok" and n["status"] == "ok" and b.get("us") and n.get("us"):
            changes.append((n["us"] / b["us"] - 1.0, cid, b["us"], n["us"]))
    for delta, cid, bu, nu in sorted(changes, reverse=True):
        if 100 * delta > fail_above:
            failures.append(f"{cid}: {bu:.2f} us -> {nu:.2f} us (+{100 * delta:.1f}% > {fail_above:g}%)")
    if changes:
        worst, best = max(changes), min(changes)
        notes.append(f"{len(changes)} timed cases compared; slowest change {100 * worst[0]:+.1f}% ({worst[1]}), "
                     f"fastest {100 * best[0]:+.1f}% ({best[1]})")
    else:
        notes.append("no case was timed in both files (CPU runs record null times): only correctness compared")
    new_only = sorted(set(cur) - set(old))
    for what, ids in (("measured in BASE but missing from NEW", gone), ("only in NEW", new_only)):
        if ids:
            notes.append(f"{len(ids)} cases {what}: {', '.join(ids[:4])}" + (" ..." if len(ids) > 4 else ""))
    return failures, notes


def main_compare(argv) -> int:
    p = argparse.ArgumentParser(prog="python -m bench compare")
    p.add_argument("base")
    p.add_argument("new")
    p.add_argument("--fail-above", type=float, default=5.0, help="percent slowdown that fails the gate")
    p.add_argument("--include-peers", action="store_true", help="also gate the peers' times")
    args = p.parse_args(argv)
    base, new = load_results(args.base), load_results(args.new)
    if _gpu(base) != _gpu(new):
        print(f"bench compare: refusing to compare results from different GPUs: {args.base} ran on "
              f"{_gpu(base) or 'CPU'}, {args.new} on {_gpu(new) or 'CPU'}")
        return 2
    failures, notes = compare(base, new, args.fail_above, args.include_peers)
    for line in notes:
        print(f"  {line}")
    if failures:
        print(f"bench compare: FAIL: {len(failures)} case(s) regressed (threshold {args.fail_above:g}%):")
        for line in failures:
            print(f"  {line}")
        return 1
    print(f"bench compare: OK (no quantcc case slower by more than {args.fail_above:g}%, none newly incorrect)")
    return 0


def _newest_start(doc: dict) -> str:
    """When the newest run in a results document started (ISO 8601, so it sorts as text); '' when it has none."""
    return max((str(r.get("started") or "") for r in doc.get("runs", [])), default="")


def merge(docs: list[dict], names: list[str]) -> dict:
    """One results document from shards of one GPU. A case measured by several shards keeps the measurement of the
    shard whose runs started last (then the later file on the command line), so `s17.json` wins over `s9.json`
    whatever order a shell glob lists them in."""
    order = sorted(range(len(docs)), key=lambda i: (_newest_start(docs[i]), i))
    docs, names = [docs[i] for i in order], [names[i] for i in order]
    gpus = {_gpu(d) for d in docs}
    if len(gpus) != 1:
        raise SystemExit("bench merge: refusing to merge results from different GPUs: "
                         + ", ".join(f"{n}: {_gpu(d) or 'CPU'}" for n, d in zip(names, docs)))
    header = dict(docs[0]["header"])
    commits = sorted({str(d["header"].get("git_commit")) for d in docs})
    if len(commits) > 1:
        header["git_commit"] = " + ".join(commits)
    peers = {}
    for d in docs:
        peers.update({k: v for k, v in d["header"].get("peers", {}).items() if v or k not in peers})
    header["peers"] = peers
    cases, runs = {}, []
    for d in docs:
        runs.extend(d.get("runs", []))
        for c in d["cases"]:
            if c["id"] in cases and c["status"] == "not_run":
                continue  # a shard that ran out of time does not erase a case another shard measured
            # which code measured it (a merged file mixes shards of several commits; kept through re-merges)
            cases[c["id"]] = dict(c, commit=c.get("commit") or d["header"].get("git_commit"))
    return {"header": header, "runs": runs, "cases": list(cases.values())}


def main_merge(argv) -> int:
    p = argparse.ArgumentParser(prog="python -m bench merge")
    p.add_argument("files", nargs="+")
    p.add_argument("--out", required=True)
    p.add_argument("--no-plots", action="store_true")
    args = p.parse_args(argv)
    doc = merge([load_results(f) for f in args.files], args.files)
    for path in write_outputs(Path(args.out), doc, plots=not args.no_plots):
        print(f"wrote {path}")
    return 0


def main_report(argv) -> int:
    p = argparse.ArgumentParser(prog="python -m bench report")
    p.add_argument("results")
    p.add_argument("--out", default=None, help="default: the results file's folder")
    args = p.parse_args(argv)
    out = Path(args.out) if args.out else Path(args.results).resolve().parent
    for path in write_outputs(out, load_results(args.results)):
        print(f"wrote {path}")
    return 0
