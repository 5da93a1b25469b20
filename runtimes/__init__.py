"""Runtime adapters: one per inference runtime, behind one small interface.

A runtime takes a compiled :class:`steerkit.plan.Plan` and applies it to a
target it understands (a transformers model, a GGUF file...).  The contract,
checked by one shared test over every registered runtime:

* ``attach(target, plan)`` applies the plan and returns a :class:`Handle`;
  ``handle.remove()`` restores the target exactly (outputs byte-identical to
  the untouched model).
* A runtime refuses, before touching anything, an edit it cannot express
  exactly (raising :class:`steerkit.SteerkitError`).

Runtimes register themselves by name in :data:`RUNTIMES`.
"""

from runtimes.base import RUNTIMES, Handle, Runtime, get_runtime, register

__all__ = ["Handle", "Runtime", "RUNTIMES", "get_runtime", "register"]
