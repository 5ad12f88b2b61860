"""Secure aggregation: the server learns the sum of the clients' vectors and nothing else.

Implements Bonawitz et al., "Practical Secure Aggregation for Privacy-Preserving Machine
Learning" (CCS 2017), with the sparse neighbour graph of Bell et al., "Secure Single-Server
Aggregation with (Poly)Logarithmic Overhead" (CCS 2020). Pure protocol: no torch, no I/O.

Two ways in:

* :func:`aggregate` runs a whole round in-process (tests, experiments, benchmarks).
* :class:`Client` and :class:`Server` are sans-I/O state machines for your own transport:
  bytes in, bytes out.
"""

from secagg.client import Client, ClientStats
from secagg.config import PROTOCOL_VERSION, SecAggConfig
from secagg.contribution import Contribution, StalenessRule, WeightRule
from secagg.errors import (
    AuthenticationFailed,
    ConfigurationError,
    DuplicateMessage,
    ErrorCode,
    InconsistentRequest,
    InconsistentShares,
    InvalidInput,
    LocalProtocolError,
    MalformedMessage,
    ParameterMismatch,
    PolicyViolation,
    RemoteProtocolError,
    ReplayedSession,
    SecAggError,
    ThresholdNotMet,
    UnexpectedPhase,
    UnknownSender,
    UnsupportedVersion,
    WrongSession,
    error_code,
)
from secagg.parameters import ParameterChoice, recommend_parameters
from secagg.policy import ClientPolicy, Encoding
from secagg.randomness import DeterministicRandom, RandomSource
from secagg.server import Server, ServerResult
from secagg.simulate import AggregationResult, ProgressCallback, aggregate
from secagg.stages import ClientStage, MessageType, Phase, ServerStage

__all__ = [
    "PROTOCOL_VERSION",
    "AggregationResult",
    "AuthenticationFailed",
    "Client",
    "ClientPolicy",
    "ClientStage",
    "ClientStats",
    "ConfigurationError",
    "Contribution",
    "DeterministicRandom",
    "DuplicateMessage",
    "Encoding",
    "ErrorCode",
    "InconsistentRequest",
    "InconsistentShares",
    "InvalidInput",
    "LocalProtocolError",
    "MalformedMessage",
    "MessageType",
    "ParameterChoice",
    "ParameterMismatch",
    "Phase",
    "PolicyViolation",
    "ProgressCallback",
    "RandomSource",
    "RemoteProtocolError",
    "ReplayedSession",
    "SecAggConfig",
    "SecAggError",
    "Server",
    "ServerResult",
    "ServerStage",
    "StalenessRule",
    "ThresholdNotMet",
    "UnexpectedPhase",
    "UnknownSender",
    "UnsupportedVersion",
    "WeightRule",
    "WrongSession",
    "aggregate",
    "error_code",
    "recommend_parameters",
]
