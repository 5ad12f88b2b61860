"""``privagg audit``: the guarantee report of a configuration, backed by tests and an audit.

The report states the threat model and parameters of a configuration, runs the empirical
privacy audit of that configuration (:mod:`fl.core.audit`: DP-SGD with canary records at sample
level, canary clients through the client-level mechanism at client level, training without DP
when the configuration has none), runs the test suites that back each claim, and writes
``audit.md`` and ``audit.json``. Both phases report progress.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import secagg
from dp.ledger import PrivacyLevel
from fl.core.audit import AuditResult, run_canary_audit, run_client_canary_audit
from fl.core.config import RunConfig

__all__ = [
    "CLAIMS",
    "AuditProgress",
    "Claim",
    "audit_progress",
    "build_report",
    "render_markdown",
    "run_audit",
    "write_report",
]

AuditProgress = Callable[[str, int, int], None]
"""``progress(phase, done, total)``; phases: "empirical audit", "backing tests"."""


@dataclass(frozen=True)
class Claim:
    """A guarantee and the tests (pytest node ids, relative to the repository) that check it."""

    text: str
    tests: tuple[str, ...]


CLAIMS = (
    Claim(
        "A client never reveals both secrets of one peer, so a lying server cannot unmask it "
        "(Bonawitz et al. 2017, Sec. 4)",
        (
            "tests/audit/test_malicious_server.py::test_asking_for_both_shares_of_one_peer_is_refused",
        ),
    ),
    Claim(
        "The server with fewer than t colluding clients learns nothing beyond the sum; masked "
        "vectors are uniform and independent across rounds",
        ("tests/audit/test_privacy_of_the_view.py",),
    ),
    Claim(
        "With identities, the server cannot tell clients different dropout stories, skip the "
        "consistency check, forge signatures, replay messages or add Sybils",
        ("tests/audit/test_malicious_server.py",),
    ),
    Claim(
        "At the default parameters an active server cannot isolate a client (one story per "
        "client, certified in every neighbourhood), shrink a neighbourhood unseen, rerun a "
        "session, replay signatures from another run, propose parameters below the clients' "
        "policy, or read a client's data from its errors; each strategy succeeds against a "
        "weakened client",
        ("tests/audit/test_active_server.py", "tests/fl/test_flower_attacks.py"),
    ),
    Claim(
        "Malformed, tampered, stale or out-of-order bytes raise typed errors and never change "
        "the state or the sum",
        (
            "tests/audit/test_dropouts_and_tampering.py",
            "tests/audit/test_state_machine_fuzzing.py",
            "tests/secagg/test_messages.py",
        ),
    ),
    Claim(
        "The unmasked sum is exact with dropouts in any phase while t clients remain, and "
        "refused below t",
        ("tests/secagg/test_end_to_end.py",),
    ),
    Claim(
        "Epsilons match independent references (Opacus' accountants, published values)",
        ("tests/dp/test_accounting.py",),
    ),
    Claim(
        "The empirical audits (DP-SGD with canary records, the client-level mechanism with "
        "canary clients) stay below the claimed epsilon and refute it without DP",
        ("tests/audit/test_empirical_privacy.py",),
    ),
)


def _covers(test: str, case: str) -> bool:
    """Whether a claim's test id (a file, or file::test) covers a run test case."""
    return case == test or case.startswith(test + "::") or case.startswith(test + "[")


def _run_tests(
    root: Path, claims: tuple[Claim, ...], progress: AuditProgress | None = None
) -> dict[str, dict]:
    """Run every claim's tests once; per claim: passed / failed counts and the failures."""
    paths = sorted({test for claim in claims for test in claim.tests})
    base = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider"]
    total = 0
    if progress is not None:
        collected = subprocess.run(
            [*base, "-q", "--collect-only", *paths],
            cwd=root,
            capture_output=True,
            text=True,
        )
        found = re.search(r"(\d+) tests? collected", collected.stdout)
        total = int(found.group(1)) if found else 0
        progress("backing tests", 0, total)
    with tempfile.TemporaryDirectory() as folder:
        report = Path(folder) / "junit.xml"
        process = subprocess.Popen(
            [*base, "-v", f"--junitxml={report}", *paths],
            cwd=root,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        done = 0
        for line in process.stdout or ():
            if progress is not None and re.search(r" (PASSED|FAILED|SKIPPED|ERROR|XFAIL)", line):
                done += 1
                progress("backing tests", min(done, total), total)
        process.wait()
        cases = []
        if report.is_file():
            for case in ElementTree.parse(report).getroot().iter("testcase"):
                name = case.get("classname", "").replace(".", "/") + ".py::" + case.get("name", "")
                failed = any(child.tag in ("failure", "error") for child in case)
                skipped = any(child.tag == "skipped" for child in case)
                cases.append((name, failed, skipped))
    if progress is not None:
        progress("backing tests", total, total)
    results = {}
    for claim in claims:
        mine = [case for case in cases if any(_covers(test, case[0]) for test in claim.tests)]
        results[claim.text] = {
            "tests": list(claim.tests),
            "passed": sum(1 for _, failed, skipped in mine if not failed and not skipped),
            "failed": [name for name, failed, _ in mine if failed],
        }
    return results


def run_audit(
    config: RunConfig, *, seed: int | None = None, progress: AuditProgress | None = None
) -> tuple[AuditResult, str]:
    """The empirical audit of ``config``'s privacy level, and what it trained."""
    privacy = config.privacy

    def step(done: int, total: int) -> None:
        if progress is not None:
            progress("empirical audit", done, total)

    if privacy.level is PrivacyLevel.CLIENT:
        result = run_client_canary_audit(config, seed=seed, progress=step)
        what = (
            "the client-level mechanism at the configured noise, with canary clients "
            "(epsilon against the server)"
        )
    elif privacy.level is PrivacyLevel.SAMPLE:
        result = run_canary_audit(
            epsilon=privacy.epsilon,
            noise_multiplier=privacy.noise_multiplier,
            delta=privacy.delta,
            clip=privacy.clip,
            accountant=privacy.accountant.value,
            seed=seed,
            progress=step,
        )
        what = "DP-SGD at the claimed epsilon, with canary records"
    else:
        result = run_canary_audit(epsilon=None, seed=seed, progress=step)
        what = "training without DP (what an unprotected model leaks)"
    return result, what


def build_report(
    config: RunConfig,
    *,
    run_tests: bool = True,
    audit_seed: int | None = None,
    progress: AuditProgress | None = None,
) -> dict:
    """Everything the report states, as plain data (``audit.json``).

    Args:
        config: the configuration to report on and to audit.
        run_tests: run the backing test suites (in a checkout).
        audit_seed: replay the audit's randomness.
        progress: ``progress(phase, done, total)`` for the audit and the tests.
    """
    secure, privacy, training = config.secure, config.privacy, config.training
    cohort = training.cohort_size
    session = secagg.SecAggConfig.create(
        range(1, cohort + 1), 1, threshold=secure.threshold, neighbours=secure.neighbours
    )
    policy = config.policy.client_policy()
    audit, what = run_audit(config, seed=audit_seed, progress=progress)
    root = Path(__file__).resolve().parents[1]
    tests = _run_tests(root, CLAIMS, progress) if run_tests and (root / "tests").is_dir() else None
    return {
        "threat_model": (
            "The server sees every message and may deviate from the protocol; up to "
            f"{policy.corrupt_neighbours(session)} members of any neighbourhood may collude with "
            "it (the clients' policy); clients drop out at any time. "
            + (
                "With identities the guarantees hold against an active server (signed keys and "
                "messages, consistency check)."
                if secure.identities
                else "Without identities the guarantees hold against a server that follows the protocol; "
                "an active server can simulate clients (enable identities against it)."
            )
        ),
        "secure_aggregation": {
            "enabled": secure.enabled,
            "clients": training.clients,
            "cohort": cohort,
            "threshold": session.threshold,
            "neighbours": session.neighbours,
            "graph": "complete (SecAgg)" if session.complete_graph else "random regular (SecAgg+)",
            "ring_bits": secure.ring_bits or "sized per round (32 or 64)",
            "dropouts_tolerated_per_neighbourhood": session.neighbours + 1 - session.threshold,
            "identities": secure.identities,
        },
        "client_policy": _policy_summary(policy, session),
        "differential_privacy": {
            "level": privacy.level.value,
            "epsilon": privacy.epsilon,
            "noise_multiplier": privacy.noise_multiplier,
            "delta": privacy.delta,
            "accountant": privacy.accountant.value,
        },
        "empirical_audit": audit.to_dict() | {"what": what},
        "claims": tests,
        "claims_skipped": not run_tests,
    }


def _policy_summary(policy: secagg.ClientPolicy, session: secagg.SecAggConfig) -> dict:
    """The policy in force and what it means for this configuration's sessions."""
    try:
        policy.check_session(session)
        verdict = "yes"
    except secagg.PolicyViolation as error:
        verdict = f"no: {error}"
    return {
        **policy.to_dict(),
        "colluders_assumed_per_neighbourhood": policy.corrupt_neighbours(session),
        "minimum_threshold": policy.minimum_threshold(session),
        "honest_inputs_in_any_released_sum": policy.honest_floor(session),
        "neighbours_needed_per_key_phase": policy.min_live_neighbours(session),
        "sessions_meet_the_policy": verdict,
    }


def render_markdown(report: dict) -> str:
    """``audit.md``."""
    sa, dpc, audit = (
        report["secure_aggregation"],
        report["differential_privacy"],
        report["empirical_audit"],
    )
    lines = [
        "# privagg guarantee report",
        "",
        "## Threat model",
        "",
        report["threat_model"],
        "",
        "## Secure aggregation",
        "",
        "| setting | value |",
        "|---|---|",
        *[f"| {k.replace('_', ' ')} | {v} |" for k, v in sa.items()],
        "",
        "## Client policy (what every client refuses below)",
        "",
        "| setting | value |",
        "|---|---|",
        *[f"| {k.replace('_', ' ')} | {v} |" for k, v in report["client_policy"].items()],
        "",
        "## Differential privacy",
        "",
        "| setting | value |",
        "|---|---|",
        *[f"| {k.replace('_', ' ')} | {v} |" for k, v in dpc.items()],
        "",
        "## Empirical privacy audit (one run, Steinke, Nasr, Jagielski 2023)",
        "",
        f"{audit['what']}: {audit['canaries']} canaries, {audit['correct']} of {audit['guesses']} "
        f"membership guesses correct, epsilon lower bound **{audit['lower_bound']:.2f}** at "
        f"{audit['confidence']:.0%} confidence"
        + (
            f" (claimed epsilon {audit['claimed_epsilon']:.3g})."
            if audit["claimed_epsilon"] is not None
            else "."
        ),
        "",
        _audit_verdict(audit),
        "",
        "## Claims and the tests that back them",
        "",
    ]
    claims = report["claims"]
    if claims is None and report.get("claims_skipped"):
        lines.append("The backing tests were not run (`--no-tests`).")
    elif claims is None:
        lines.append(
            "The test suites are not part of this installation; run `pytest tests/audit` in a checkout."
        )
    else:
        lines += ["| claim | tests | result |", "|---|---|---|"]
        for text, result in claims.items():
            verdict = f"{result['passed']} passed" + (
                f", **{len(result['failed'])} failed**" if result["failed"] else ""
            )
            lines.append(f"| {text} | {', '.join(f'`{t}`' for t in result['tests'])} | {verdict} |")
    return "\n".join(lines) + "\n"


def _audit_verdict(audit: dict) -> str:
    """What the audit says about the claim, including when it cannot say anything."""
    size = (
        f"{audit['guesses']} guesses can refute at most epsilon {audit['max_refutable']:.2f} "
        "(every guess right)"
    )
    claimed = audit["claimed_epsilon"]
    if claimed is None:
        return f"Without DP the audit shows its power: {size}."
    if audit["refuted"]:
        return (
            f"**The lower bound exceeds the claimed epsilon {claimed:.3g}: the mechanism or its "
            f"accounting is wrong.** ({size}.)"
        )
    if not audit["refutable"]:
        return (
            f"**This audit cannot refute the claim:** {size}, and the claim {claimed:.3g} is "
            "above that; a larger audit (more canaries) would be needed."
        )
    return f"The lower bound stays below the claim; {size}, above the claim."


@contextmanager
def audit_progress(console, *, every: float = 5.0) -> Iterator[AuditProgress]:
    """A progress callback for :func:`build_report`: rich progress bars on a terminal, a plain
    line (``phase: done/total``) every ``every`` seconds otherwise."""
    if console.is_terminal:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        with Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), console=console
        ) as bars:
            tasks: dict[str, int] = {}

            def update(phase: str, done: int, total: int) -> None:
                if phase not in tasks:
                    tasks[phase] = bars.add_task(phase, total=total or None)
                bars.update(tasks[phase], completed=done, total=total or None)

            yield update
        return
    stream: TextIO = console.file
    last = [time.monotonic()]

    def line(phase: str, done: int, total: int) -> None:
        now = time.monotonic()
        if now - last[0] >= every or done == total:
            last[0] = now
            print(f"{phase}: {done}/{total}", file=stream, flush=True)

    yield line


def write_report(out: Path, report: dict) -> None:
    """Write ``audit.json`` and ``audit.md`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "audit.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    (out / "audit.md").write_text(render_markdown(report))
