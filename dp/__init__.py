"""Differential privacy for federated learning.

* :mod:`dp.accounting` - mechanisms as frozen events, RDP and PRV accountants (pure numpy/scipy);
* :mod:`dp.ledger` - what a run spent, per round and per client, restorable on resume;
* :mod:`dp.distributed` - client-level distributed noise (Skellam, distributed discrete Gaussian);
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
from dp.errors import DPError, PrivacyConfigError, UnsupportedEvent
from dp.ledger import ClientLevelEntry, PrivacyLedger, PrivacyLevel, SampleLevelEntry

__all__ = [
    "AccountantKind",
    "ClientLevelEntry",
    "ComposedEvent",
    "DPError",
    "DiscreteGaussianEvent",
    "DistributedNoiseEncoder",
    "GaussianEvent",
    "Mechanism",
    "PoissonSampledEvent",
    "PrivacyConfigError",
    "PrivacyLedger",
    "PrivacyLevel",
    "PrvAccountant",
    "RdpAccountant",
    "SampleLevelEntry",
    "SelfComposedEvent",
    "SkellamEvent",
    "UnsupportedEvent",
    "calibrate",
    "make_accountant",
]
