"""quantcc codegen: lower a FormatSpec to a KernelPlan and render it through Jinja templates."""
__version__ = "0.1.0"
