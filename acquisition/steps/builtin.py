"""The shipped step types, in the order ``assay protocol check`` and error messages list
them; importing this module registers them (each module registers its own)."""

import importlib

__all__ = ["SHIPPED"]

SHIPPED = ("incubate", "harvest", "count", "prompt", "analyze", "wait", "perfuse", "record",
           "seal_test", "break_in", "membrane_test", "set_holding", "compensate",
           "analyze_effect")  # fmt: skip
_MODULES = ("incubate", "harvest", "count", "prompt", "analyze", "wait", "perfuse", "record",
            "patch", "analyze_effect")  # fmt: skip

for _name in _MODULES:
    importlib.import_module(f"acquisition.steps.{_name}")
