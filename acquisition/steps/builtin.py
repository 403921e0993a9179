"""The shipped step types, in the order ``assay protocol check`` and error messages list
them; importing this module registers them."""

import importlib

__all__ = ["SHIPPED"]

SHIPPED = ("incubate", "harvest", "count", "prompt", "analyze", "wait", "perfuse", "record")

for _name in SHIPPED:
    importlib.import_module(f"acquisition.steps.{_name}")
