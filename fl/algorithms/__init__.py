"""What the server and the clients do in a round, independent of the engine that runs it.

* :mod:`~fl.algorithms.base` - the :class:`~fl.algorithms.base.Algorithm` interface the engines
  call (each client's local work, its local objective) and the round's stragglers;
* :mod:`~fl.algorithms.fedavg` - FedAvg (McMahan et al. 2017): cohort sampling, applying the
  weighted mean update with a server learning rate, evaluation; stragglers are dropped;
* :mod:`~fl.algorithms.fedprox` - FedProx (Li et al. 2020): a proximal term in the local
  objective, and stragglers' partial work averaged in;
* :mod:`~fl.algorithms.fedbuff` - FedBuff's staleness weight s(tau) = 1 / sqrt(1 + tau), applied
  by each client to its update before masking (Nguyen et al. 2022).
"""

from fl._lazy import submodules

__all__ = ["base", "fedavg", "fedbuff", "fedprox"]
__getattr__, __dir__ = submodules(__name__, __all__)
