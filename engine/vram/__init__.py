"""Automatic VRAM strategy: probe the machine, plan where every weight lives, apply the plan, fall back on
out-of-memory. Planning is pure (planner.plan); probing and applying happen only when called.

    import engine.vram
    plan = engine.vram.plan_for_preset("qwen-image", vram_gb=12, ram_gb=64)
    print(plan.explanation)   # "Qwen-Image at 1328x1328 on 12 GB: transformer in fp8, ..."
"""

_EXPORTS = {
    "plan_for_preset": "engine.vram.preset_plan", "describe_plan": "engine.vram.preset_plan",
    "plan_for_model": "engine.vram.preset_plan", "plan_lines": "engine.vram.explain",
    "machine_budget": "engine.vram.preset_plan", "hypothetical_budget": "engine.vram.preset_plan",
    "plan": "engine.vram.planner", "Budget": "engine.vram.planner", "VramPlan": "engine.vram.planner",
    "ComponentPlan": "engine.vram.planner", "PlanError": "engine.vram.planner", "Mode": "engine.vram.vocabulary",
    "Workload": "engine.vram.workload", "probe": "engine.vram.probe", "OutOfMemory": "engine.vram.fallback",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'engine.vram' has no attribute {name!r}")
