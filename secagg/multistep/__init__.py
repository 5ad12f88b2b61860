"""Multi-step secure aggregation: one key agreement, many secure sums (data-parallel SGD).

The one-round protocol of :mod:`secagg` agrees keys, shares secrets and masks once per round.
Data-parallel training sums gradients at every optimizer step, so a session here agrees keys once
(:class:`SessionMember`), then derives every step's pairwise masks from the pairwise secrets and
the step digest (HKDF), with a fresh self mask per step whose Shamir shares travel with it.
Pure protocol: no torch, no I/O; :mod:`fl.engines.distributed` carries it over torch.distributed.

SECURITY.md ("Secure data-parallel training") states what it protects and under which
conditions.
"""

from secagg.multistep.config import SessionConfig, StepContext, step_threshold
from secagg.multistep.member import MemberStage, SessionMember, StepUnmasker
from secagg.multistep.messages import (
    Decision,
    KeyAdvert,
    MultiStepKind,
    Outcome,
    SeedReveal,
    ShareOffer,
    ShareReveal,
    Status,
    StatusCode,
    decode,
    encode,
)

__all__ = [
    "Decision",
    "KeyAdvert",
    "MemberStage",
    "MultiStepKind",
    "Outcome",
    "SeedReveal",
    "SessionConfig",
    "SessionMember",
    "ShareOffer",
    "ShareReveal",
    "Status",
    "StatusCode",
    "StepContext",
    "StepUnmasker",
    "decode",
    "encode",
    "step_threshold",
]
