"""Triton backend: render a KernelPlan to a standalone .py file (imports only torch and triton)."""
from __future__ import annotations

from .env import kernel_template_hash, render
from .plan import KernelPlan


def template_for(plan: KernelPlan) -> str:
    return f"triton/{plan.family}.py.jinja"


def render_triton(plan: KernelPlan) -> str:
    name = template_for(plan)
    src = render(name, plan=plan, template_name=name, template_hash=kernel_template_hash(plan.decode_template))
    compile(src, f"<{plan.name}.py>", "exec")  # a template bug shows here, at build time, with the kernel name
    return src
