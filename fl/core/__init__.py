"""What every engine shares: configuration, data, models, local training, weighted averaging,
privacy planning, checkpoints and reports.

Submodules (imported on first use, so that protocol-only entry points do not load torch):
:mod:`~fl.core.config`, :mod:`~fl.core.data`, :mod:`~fl.core.synthetic` (Synthetic(alpha, beta)
of the FedProx paper), :mod:`~fl.core.models`, :mod:`~fl.core.params`, :mod:`~fl.core.training`
(a client's local update), :mod:`~fl.core.aggregation` (weighted means, in the clear or through
secure aggregation), :mod:`~fl.core.privacy` (noise calibration and what a round spends),
:mod:`~fl.core.central` (central DP: the server's noise on the unmasked sum),
:mod:`~fl.core.speeds` (the simulated clock), :mod:`~fl.core.audit` (the empirical privacy
audit), :mod:`~fl.core.budget`, :mod:`~fl.core.checkpoint`, :mod:`~fl.core.run_folder`,
:mod:`~fl.core.report`.
"""

from fl._lazy import submodules

__all__ = [
    "aggregation",
    "audit",
    "budget",
    "central",
    "checkpoint",
    "config",
    "data",
    "models",
    "params",
    "privacy",
    "report",
    "run_folder",
    "speeds",
    "synthetic",
    "training",
]
__getattr__, __dir__ = submodules(__name__, __all__)
