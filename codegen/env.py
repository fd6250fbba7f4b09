"""The one Jinja Environment of quantcc (StrictUndefined: a missing variable is an error, not '')."""
from __future__ import annotations

import functools
import hashlib
import re
import struct
from pathlib import Path

import jinja2

TEMPLATE_ROOT = Path(__file__).resolve().parent.parent / "templates"


class TemplateError(RuntimeError):
    pass


@functools.lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATE_ROOT)),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
        extensions=["jinja2.ext.do"],
    )
    env.filters["pyrepr"] = repr
    env.filters["f16x2"] = f16x2
    from ir.bitpack import part_place, part_position   # render-time placement shared with the torch twin
    env.globals.update(part_place=part_place, part_position=part_position, stream_hint=stream_hint,
                       config_error=config_error)
    return env


def stream_hint(plan) -> str:
    """Extra tl.load arguments for the loads of a weight stream (the packed codes, read once per call): the
    config's cache policy, or '' at the default (so kernels tuned before the option render unchanged)."""
    return ', eviction_policy="evict_first"' if plan.config.evict_first else ""


def f16x2(value: float) -> str:
    """The PTX immediate (hex) of an int32 holding fp16(value) in both halves; value must be exact in fp16."""
    h = struct.unpack("<H", struct.pack("<e", value))[0]
    if struct.unpack("<e", struct.pack("<H", h))[0] != value:
        raise TemplateError(f"f16x2: {value!r} is not exact in float16")
    return "0x%04X%04X" % (h, h)


def config_error(message: str):
    """Raised from a template when the plan's config asks for something its format's decode cannot do."""
    from ir import SpecError
    raise SpecError(message)


def render(template: str, **context) -> str:
    """Render a template; syntax and undefined-variable errors come back with numbered context lines."""
    env = environment()
    try:
        return env.get_template(template).render(**context)
    except jinja2.TemplateSyntaxError as e:
        src = Path(e.filename or TEMPLATE_ROOT / template).read_text().splitlines()
        lo, hi = max(0, e.lineno - 4), min(len(src), e.lineno + 3)
        ctx = "\n".join(f"{'>>' if i + 1 == e.lineno else '  '} {i + 1:4d} | {src[i]}" for i in range(lo, hi))
        raise TemplateError(f"{e.filename}:{e.lineno}: {e.message}\n{ctx}") from e
    except jinja2.UndefinedError as e:
        raise TemplateError(f"rendering {template}: {e.message} (a template used a variable the plan lacks)") from e


SKELETON = ("triton/base.py.jinja", "triton/gemv.py.jinja", "triton/gemm.py.jinja")
_IMPORT = re.compile(r"""{%-?\s*(?:from|import|extends|include)\s+["']([^"']+)["']""")


def _closure(names) -> list[str]:
    """The named templates plus every template they import, extend or include, sorted."""
    seen, todo = set(), list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo.extend(_IMPORT.findall((TEMPLATE_ROOT / name).read_text()))
    return sorted(seen)


@functools.lru_cache(maxsize=256)
def template_hash(*names: str) -> str:
    """sha256 (16 hex) over the named templates and what they import; no names: the shared kernel
    skeleton (base + gemv + gemm), the part every generated kernel has in common."""
    h = hashlib.sha256()
    for name in _closure(names or SKELETON):
        h.update(name.encode())
        h.update((TEMPLATE_ROOT / name).read_bytes())
    return h.hexdigest()[:16]


def kernel_template_hash(decode_template: str) -> str:
    """What a generated kernel's bytes depend on among the templates: the skeleton and its decode file."""
    return template_hash(*SKELETON, decode_template)
