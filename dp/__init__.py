"""Differential privacy for federated learning.

* :mod:`dp.accounting` - mechanisms as frozen events, RDP and PRV accountants (pure numpy/scipy);
* :mod:`dp.ledger` - what a run spent, per round and per client, restorable on resume;
* :mod:`dp.distributed` - client-level distributed noise (Skellam, distributed discrete Gaussian);
* :mod:`dp.samplers` - exact integer noise samplers from cryptographically secure bits;
* :mod:`dp.audit` - empirical lower bounds from membership guesses (one-run audits);
* :mod:`dp.local` - sample-level DP-SGD with Opacus (the only module that imports torch; import
  it explicitly).
"""

from dp.accounting import (
    AccountantKind,
    ComposedEvent,
    DiscreteGaussianEvent,
    GaussianEvent,
    PoissonSampledEvent,
    PrvAccountant,
    RdpAccountant,
    SelfComposedEvent,
    SkellamEvent,
    calibrate,
    make_accountant,
)
from dp.distributed import DistributedNoiseEncoder, Mechanism
from dp.errors import DPError, PrivacyConfigError, PrivacyWarning, UnsupportedEvent
from dp.ledger import (
    CentralEntry,
    ClientLevelEntry,
    CountEntry,
    EpsilonReport,
    PrivacyLedger,
    PrivacyLevel,
    SampleLevelEntry,
)

__all__ = [
    "AccountantKind",
    "CentralEntry",
    "ClientLevelEntry",
    "ComposedEvent",
    "CountEntry",
    "DPError",
    "DiscreteGaussianEvent",
    "DistributedNoiseEncoder",
    "EpsilonReport",
    "GaussianEvent",
    "Mechanism",
    "PoissonSampledEvent",
    "PrivacyConfigError",
    "PrivacyLedger",
    "PrivacyLevel",
    "PrivacyWarning",
    "PrvAccountant",
    "RdpAccountant",
    "SampleLevelEntry",
    "SelfComposedEvent",
    "SkellamEvent",
    "UnsupportedEvent",
    "calibrate",
    "make_accountant",
]
