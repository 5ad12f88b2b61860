"""The ways of running a federation: each samples a cohort, has it train, takes the secure sum
and applies it, through the one interface of :mod:`~fl.engines.base`.

* :mod:`~fl.engines.base` - :class:`~fl.engines.base.Engine` (the four steps) and the record of a
  round;
* :mod:`~fl.engines.inprocess` - the embedded default: every client in this process
  (:func:`fl.run_federation`), driving :mod:`~fl.engines.federation`'s rounds, or
  :mod:`~fl.engines.asynchronous`' buffered asynchronous sessions;
* :mod:`~fl.engines.flower` - this project's protocol on Flower's engines (optional extra).
"""

from fl._lazy import submodules

__all__ = ["asynchronous", "base", "federation", "flower", "flower_async", "inprocess"]
__getattr__, __dir__ = submodules(__name__, __all__)
