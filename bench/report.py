"""Benchmark results: the results.json schema, the markdown table and the PNG plots.

results.json: {"schema": 1, "header": {gpu, capability, driver, cuda, torch, triton, quantcc, template_hash,
git_commit, peers: {name: version}, ...}, "runs": [{argv, shard, started, elapsed_s, backend}], "cases": [case]}
A case: id ("kind:name|backend|NxK|M<m>"), kind (quantcc | peer | baseline), name, backend, N, K, M, klass,
bits_per_weight, status (ok | FAILED | error | skipped | not_run), reason, rel_err, max_rel_err, config,
config_source, us (median, CUDA graph, L2 flushed), eager_us, bytes, tbps, floor_us, floor_frac,
fp16_us, speedup_vs_fp16. Times are null where nothing was timed (CPU runs, failed or skipped cases).

Plots (matplotlib, Agg), formats grouped by class so no panel carries more than a dozen lines:
  m1_floor_fraction.png  every format and peer at M=1: % of the read floor over its own bytes, one dot per shape
  shape_<N>x<K>.png      per class: achieved TB/s over M with the read floor (band over the class's byte counts)
                         and fp16 cuBLAS drawn (roofline-style, top row); speedup vs fp16 cuBLAS over M (bottom)"""
from __future__ import annotations

import json
import os
import re
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

SCHEMA = 1
CLASSES = ("int4 (GPTQ-like)", "4-bit other (GGUF, LUT, ...)", "2-3 bit scalar", "codebook / trellis",
           "8-bit / act-quant")
_GPTQ_LIKE = ("gptq", "awq", "eqat", "matryoshka")


def format_class(spec) -> str:
    """The plot/report group of a format, from its IR: activation quantization or >= 6 bits; vector codebooks
    and trellises; <= 3.6 bits; 4-bit integer GPTQ-like layouts; other 4-bit (GGUF blocks, LUTs, ...)."""
    bits = spec.bits_per_weight(4096, 4096)
    if spec.act_quant is not None or bits >= 6:
        return CLASSES[4]
    if spec.decode.kind in ("vector_codebook", "bitshift_trellis"):
        return CLASSES[3]
    if bits < 3.6:
        return CLASSES[2]
    if spec.family in _GPTQ_LIKE:
        return CLASSES[0]
    return CLASSES[1]


def gpu_slug(header: dict) -> str:
    if not header.get("gpu"):
        return "cpu_interpreter"
    return re.sub(r"[^0-9a-z]+", "_", header["gpu"].lower()).strip("_")


# ------------------------------------------------------------------------------------------------ I/O
def load_results(path) -> dict:
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise SystemExit(f"bench: cannot read {path}: {e}")
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA or not isinstance(doc.get("cases"), list):
        raise SystemExit(f"bench: {path} is not a bench results file (schema {SCHEMA} with 'header' and 'cases')")
    return doc


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def write_outputs(out_dir, doc: dict, plots: bool = True) -> list[Path]:
    """results.json and results.md (and the PNGs) into out_dir; returns the paths written."""
    out_dir = Path(out_dir)
    doc = {"schema": SCHEMA, **{k: v for k, v in doc.items() if k != "schema"}}
    _atomic_write(out_dir / "results.json", json.dumps(doc, indent=1, default=str) + "\n")
    written = [out_dir / "results.json"]
    try:  # the measurements are safe on disk; a rendering bug must not lose them (`bench report` redoes it)
        _atomic_write(out_dir / "results.md", render_markdown(doc))
        written.append(out_dir / "results.md")
        if plots:
            written += render_plots(doc, out_dir)
    except Exception as e:  # noqa: BLE001
        print(f"bench: rendering {out_dir} failed ({type(e).__name__}: {e}); results.json is complete, "
              f"re-render with `python -m bench report {out_dir / 'results.json'}`", file=sys.stderr)
    return written


# ------------------------------------------------------------------------------------------- helpers
def _shapes(cases) -> list[tuple[int, int]]:
    return sorted({(c["N"], c["K"]) for c in cases}, key=lambda s: (s[0] * s[1], s))


def _label(c: dict) -> str:
    return {"peer": f"{c['name']} (peer)", "baseline": "fp16 cuBLAS"}.get(c["kind"], c["name"])


def _order(cases) -> list[str]:
    """Row labels: per class, its quantcc formats by name then its peers; fp16 cuBLAS last."""
    return [lab for _, labs in _class_order(cases) for lab in labs]



def _class_table(title, head, sep, order, shapes, by, M, field, fmt) -> list[str]:
    """One markdown table: a row per format (with class and bits/w), a column per shape, `fmt(case)` where the
    case has `field`, else its status; formats with no value at any shape are left out."""
    lines = [f"## {title}", "", head, sep]
    for lab in order:
        row = [by.get((lab, n, k, M)) for n, k in shapes]
        if not any(c and c.get(field) for c in row):
            continue
        c0 = next(c for c in row if c)
        cells = [fmt(c) if c and c.get(field) else (c["status"] if c else "") for c in row]
        lines.append(f"| {lab} | {c0.get('klass', '')} | {_fmt(c0.get('bits_per_weight'), '.2f')} | "
                     + " | ".join(cells) + " |")
    return lines + [""]

def _fmt(v, spec: str, none: str = "-") -> str:
    return none if v is None else format(v, spec)


def _timed(cases) -> list[dict]:
    return [c for c in cases if c["status"] == "ok" and c.get("us")]


# ------------------------------------------------------------------------------------------ markdown
def render_markdown(doc: dict) -> str:
    h, cases = doc["header"], doc["cases"]
    shapes = _shapes(cases)
    batches = sorted({c["M"] for c in cases})
    lines = [f"# quantcc kernel benchmarks: {h.get('gpu') or 'CPU (interpreter)'}", ""]
    keys = ("gpu", "capability", "sms", "driver", "cuda", "torch", "triton", "quantcc", "template_hash", "git_commit")
    lines.append("Machine: " + ", ".join(f"{k} `{h[k]}`" for k in keys if h.get(k) is not None) + ".")
    if h.get("peers"):
        lines.append("Peers: " + ", ".join(f"{k} `{v or 'not installed'}`" for k, v in h["peers"].items()) + ".")
    for r in doc.get("runs", []):
        lines.append(f"Run: shard {r.get('shard')}, started {r.get('started')}, {r.get('elapsed_s')} s, "
                     f"`{' '.join(r.get('argv', []))}`.")
    lines += ["", "Each time is the median of CUDA-graph replays of one call timed by `triton.testing.do_bench` "
              "(L2 flushed between runs), in microseconds. Bytes = stored tensors + activations + output. The read "
              "floor is the time of a swept streaming-read kernel over the same bytes, measured in the same run: "
              "the practical limit at M=1. `x fp16` = fp16 cuBLAS time / kernel time, same run. Every case was "
              "checked against its reference before timing (rel err = ||y - ref|| / ||ref||).", ""]
    timed = _timed(cases)
    if not timed:
        lines += ["**No timing**: this run had no CUDA device (kernels ran under TRITON_INTERPRET=1); only "
                  "correctness was checked, and every time is null.", ""]
    by = {(_label(c), c["N"], c["K"], c["M"]): c for c in cases}
    order = _order(cases)
    if timed:
        head = "| format | class | bits/w | " + " | ".join(f"{n}x{k}" for n, k in shapes) + " |"
        sep = "|---|---|---|" + "---|" * len(shapes)
        if 1 in batches:
            lines += _class_table("M=1: fraction of the read floor (the floor for its own bytes over the kernel "
                                  "time)", head, sep, order, shapes, by, 1, "floor_frac",
                                  lambda c: f"{_frac(c)} ({c['us']:.1f} us)")
        for M in batches:
            lines += _class_table(f"M={M}: speedup vs fp16 cuBLAS", head, sep, order, shapes, by, M,
                                  "speedup_vs_fp16", lambda c: f"{c['speedup_vs_fp16']:.2f}x")
    lines += ["## All cases", ""]
    commits = len({c.get("commit") for c in cases}) > 1   # merged shards: say which commit measured each row
    if commits:
        lines += ["`commit`: the code that measured the row (merged shards of several commits).", ""]
    for n, k in shapes:
        lines += [f"### {n}x{k}", "", "| format | M | status | config (source) | rel err | us | eager us | MB | "
                  "TB/s | floor us | % floor | x fp16 |" + (" commit |" if commits else ""),
                  "|---|---|---|---|---|---|---|---|---|---|---|---|" + ("---|" if commits else "")]
        for M in batches:
            for lab in order:
                c = by.get((lab, n, k, M))
                if c is None or c["status"] in ("skipped", "not_run"):
                    continue
                cfg = f"{c.get('config', '')} ({c.get('config_source', '')})" if c.get("config") else ""
                lines.append(
                    f"| {lab} | {M} | {c['status']} | {cfg} | {_fmt(c.get('rel_err'), '.1e')} | "
                    f"{_fmt(c.get('us'), '.1f')} | {_fmt(c.get('eager_us'), '.0f')} | "
                    f"{_fmt(c['bytes'] / 1e6 if c.get('bytes') else None, '.1f')} | {_fmt(c.get('tbps'), '.2f')} | "
                    f"{_fmt(c.get('floor_us'), '.1f')} | {_frac(c)} | "
                    f"{_fmt(c.get('speedup_vs_fp16'), '.2f')} |" + (f" {c.get('commit') or '-'} |" if commits else ""))
        lines.append("")
    marks = {floor_mark(c) for c in cases} - {""}
    lines += [note for mark, note in FLOOR_NOTES.items() if mark in marks for note in (note, "")]
    lines += _not_measured(cases)
    return "\n".join(lines) + "\n"


FLOOR_NOTES = {
    "†": "† the floor of this row came from the floor kernel before session 7 over a word count not divisible by 16: "
         "it streamed with 4-byte loads and .cg hints, up to 35% slower than the current floor, so the fraction is "
         "that much too high. Re-run the case (NOTES.md, Sessions 6 and 7).",
    "‡": "‡ the floor of this row came from the floor kernel before session 7 (.cg loads): 8-10% slower at large sizes "
         "than the current evict-first floor under do_bench's L2 flush (54.1 vs 49.6 us for 125 MB), so the fraction "
         "is about that much too high (NOTES.md, Session 7).",
}


def floor_mark(c: dict) -> str:
    """'†' or '‡' for a floor measured by the pre-session-7 kernel (its config has no `unroll`): † over a word
    count not divisible by 16 (4-byte loads), ‡ otherwise; '' for the current kernel's floors (see FLOOR_NOTES)."""
    cfg = c.get("floor_config") or {}
    if not cfg or "unroll" in cfg or not c.get("bytes"):
        return ""
    return "†" if (c["bytes"] // 4) % 16 else "‡"


def _frac(c: dict) -> str:
    return _fmt(c.get("floor_frac"), ".0%") + floor_mark(c)


def _not_measured(cases) -> list[str]:
    """FAILED / error / skipped / not-run cases, one line per (case name, status, reason) with its shapes and Ms."""
    groups = defaultdict(list)
    for c in cases:
        if c["status"] != "ok":
            groups[(_label(c), c["status"], c.get("reason") or "")].append(f"{c['N']}x{c['K']} M={c['M']}")
    if not groups:
        return ["All cases ran and passed their correctness check.", ""]
    out = ["## Not measured (FAILED = wrong result, never timed; error; skipped; not run)", "",
           "| case | status | where | reason |", "|---|---|---|---|"]
    for (lab, st, reason), where in sorted(groups.items()):
        w = ", ".join(where[:6]) + (f" (+{len(where) - 6})" if len(where) > 6 else "")
        out.append(f"| {lab} | {st} | {w} | {reason.replace('|', '/').replace(chr(10), ' ')[:200]} |")
    return out + [""]


# --------------------------------------------------------------------------------------------- plots
def _style(kind: str) -> dict:
    if kind == "peer":
        return {"linestyle": "--", "linewidth": 2.2, "marker": "s", "markersize": 5}
    return {"linestyle": "-", "linewidth": 1.4, "marker": "o", "markersize": 4}


def _colors(n: int):
    import matplotlib
    cmap = matplotlib.colormaps["tab20" if n > 10 else "tab10"]
    return [cmap(i % cmap.N) for i in range(n)]


def _classes_present(cases) -> list[str]:
    present = {c.get("klass") for c in cases if c["kind"] != "baseline"}
    return [k for k in CLASSES if k in present] + sorted(k for k in present - set(CLASSES) if k)


def render_plots(doc: dict, out_dir) -> list[Path]:
    cases = _timed(doc["cases"])
    if not cases:
        return []
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    gpu = doc["header"].get("gpu") or "?"
    written = []
    for fig, name in (_plot_floor_fraction(cases, gpu), *_plot_shapes(cases, gpu)):
        if fig is None:
            continue
        path = Path(out_dir) / name
        fig.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(fig)
        written.append(path)
    return written


def _class_order(cases) -> list[tuple[str, list[str]]]:
    """[(class, labels)]: each class's quantcc formats by name, then its peers; fp16 cuBLAS last."""
    groups = defaultdict(dict)
    for c in cases:
        klass = "fp16" if c["kind"] == "baseline" else c.get("klass") or "?"
        groups[klass].setdefault(_label(c), (c["kind"] == "peer", c["name"]))
    names = [k for k in CLASSES if k in groups] + sorted(k for k in groups if k not in CLASSES and k != "fp16")
    names += ["fp16"] if "fp16" in groups else []
    return [(k, sorted(groups[k], key=groups[k].get)) for k in names]


def _plot_floor_fraction(cases, gpu):
    import matplotlib.pyplot as plt
    m1 = [c for c in cases if c["M"] == 1 and c.get("floor_frac")]
    if not m1:
        return None, ""
    groups = _class_order(m1)
    order = [lab for _, labs in groups for lab in labs]
    shapes = _shapes(m1)
    colors = _colors(len(shapes))
    fig, ax = plt.subplots(figsize=(10, 0.27 * len(order) + 2.2))
    ypos = {lab: len(order) - i for i, lab in enumerate(order)}
    for si, (n, k) in enumerate(shapes):
        pts = [(100 * c["floor_frac"], ypos[_label(c)]) for c in m1 if (c["N"], c["K"]) == (n, k)]
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], color=colors[si], s=30, label=f"{n}x{k}", zorder=3)
    ax.set_yticks(list(ypos.values()), list(ypos.keys()), fontsize=8)
    for t in ax.get_yticklabels():
        if t.get_text().endswith("(peer)") or t.get_text() == "fp16 cuBLAS":
            t.set_fontweight("bold")
    xmax = max(110, max(100 * c["floor_frac"] for c in m1) + 5)
    for klass, labs in groups:
        top = ypos[labs[0]] + 0.5
        ax.axhline(top, color="gray", linewidth=0.6)
        ax.text(xmax - 1, top - 0.15, klass, ha="right", va="top", fontsize=8, style="italic", color="dimgray")
    ax.axvline(100, color="black", linewidth=1)
    ax.axvline(90, color="gray", linewidth=0.8, linestyle=":")
    ax.set_xlabel("% of the read floor over the kernel's own bytes (M=1; 100% = streaming those bytes; "
                  "dotted: 90%)")
    ax.set_xlim(0, xmax)
    ax.set_ylim(0.4, len(order) + 0.6)
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(f"M=1 GEMV vs the read floor, {gpu}", pad=28)
    ax.legend(title=None, fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(shapes),
              frameon=False)
    return fig, "m1_floor_fraction.png"


def _series(cases, klass: str):
    """{label: (kind, [cases])} for the class, peers included."""
    out = {}
    for c in cases:
        if c.get("klass") == klass and c["kind"] != "baseline":
            out.setdefault(_label(c), (c["kind"], []))[1].append(c)
    return dict(sorted(out.items(), key=lambda kv: (kv[1][0] == "peer", kv[0])))


def _plot_shapes(cases, gpu):
    """One figure per N x K: per class (columns), achieved TB/s over M with the read-floor band and fp16
    cuBLAS (top), and the speedup vs fp16 cuBLAS over M (bottom); one color per format in both rows."""
    import matplotlib.pyplot as plt
    for n, k in _shapes(cases):
        at = [c for c in cases if (c["N"], c["K"]) == (n, k)]
        classes = _classes_present(at)
        if not classes:
            continue
        batches = sorted({c["M"] for c in at})
        base = sorted((c["M"], c["tbps"]) for c in at if c["kind"] == "baseline")
        fig, axes = plt.subplots(2, len(classes), figsize=(4.6 * len(classes), 10.5), squeeze=False)
        for col, klass in enumerate(classes):
            top, bot = axes[0][col], axes[1][col]
            series = _series(at, klass)
            for color, (lab, (kind, cs)) in zip(_colors(len(series)), series.items()):
                cs = sorted(cs, key=lambda c: c["M"])
                top.plot([c["M"] for c in cs], [c["tbps"] for c in cs], color=color, label=lab, **_style(kind))
                sp = [c for c in cs if c.get("speedup_vs_fp16")]
                bot.plot([c["M"] for c in sp], [c["speedup_vs_fp16"] for c in sp], color=color, label=lab,
                         **_style(kind))
            band = defaultdict(list)
            for _, cs in series.values():
                for c in cs:
                    if c.get("floor_us"):
                        band[c["M"]].append(c["bytes"] / c["floor_us"] / 1e6)
            if band:
                ms = sorted(band)
                top.fill_between(ms, [min(band[m]) for m in ms], [max(band[m]) for m in ms], color="black",
                                 alpha=0.18, step=None, label="read floor (TB/s at these bytes)")
                top.plot(ms, [max(band[m]) for m in ms], color="black", linestyle=":", linewidth=1.5)
            if base:
                top.plot([m for m, _ in base], [t for _, t in base], color="gray", marker="D", linewidth=2.5,
                         alpha=0.6, label="fp16 cuBLAS")
            bot.axhline(1.0, color="gray", linewidth=2.5, alpha=0.6, label="fp16 cuBLAS")
            for ax in (top, bot):
                ax.set_xscale("log", base=2)
                ax.set_xticks(batches, [str(b) for b in batches])
                ax.minorticks_off()
                ax.grid(alpha=0.3)
                ax.set_xlabel("M (rows per call)")
            top.set_title(klass, fontsize=11)
            top.set_ylim(bottom=0)
            top.set_ylabel("achieved TB/s (bytes read / time)")
            bot.set_yscale("log", base=2)
            bot.yaxis.set_major_formatter(matplotlib_formatter())
            bot.set_ylabel("speedup vs fp16 cuBLAS (log)")
            handles, labels = top.get_legend_handles_labels()
            bot.legend(handles, labels, fontsize=7.5, loc="upper center", bbox_to_anchor=(0.5, -0.16),
                       ncol=2, frameon=False)
        fig.suptitle(f"N x K = {n}x{k} on {gpu}: bandwidth (top) and speedup vs fp16 cuBLAS (bottom); "
                     f"dashed = peers", fontsize=13)
        fig.tight_layout()
        yield fig, f"shape_{n}x{k}.png"


def matplotlib_formatter():
    from matplotlib.ticker import FuncFormatter
    return FuncFormatter(lambda v, _: f"{v:g}x")
