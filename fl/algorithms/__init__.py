"""What the server and the clients do in a round, independent of the engine that runs it.

* :mod:`~fl.algorithms.fedavg` - FedAvg (McMahan et al. 2017): cohort sampling, applying the
  weighted mean update with a server learning rate, evaluation.
"""

from fl._lazy import submodules

__all__ = ["fedavg"]
__getattr__, __dir__ = submodules(__name__, __all__)
