"""The client's session log (secagg.sessions): one run per session id, rounds only forward."""

import json

import pytest

from secagg import LocalProtocolError, ReplayedSession, SecAggConfig
from secagg.randomness import DeterministicRandom
from secagg.sessions import SessionLog


def _config(round_index: int, seed: int = 0, session_id: bytes | None = None) -> SecAggConfig:
    return SecAggConfig.create(
        range(1, 6),
        4,
        round_index=round_index,
        session_id=session_id,
        random_bytes=DeterministicRandom(seed),
    )


def test_a_session_id_joined_in_an_earlier_round_is_refused_in_a_later_one():
    """No second run (SECURITY.md, C4): a session id is joined once, whatever round the server
    names with it - the round check alone would let the server rerun session s as round r + 1."""
    log = SessionLog()
    first = _config(3)
    log.admit(first)
    again = _config(4, session_id=first.session_id)
    with pytest.raises(ReplayedSession, match="was joined before"):
        log.check(again)
    with pytest.raises(ReplayedSession, match="was joined before"):
        log.admit(again)
    log.admit(_config(4, seed=1))


@pytest.mark.parametrize("round_index", [0, 2, 3])
def test_a_round_not_after_the_last_one_joined_is_refused(round_index):
    """Rounds only move forward (C4): after round 3, a fresh session of round 3 or an earlier
    round is refused; round 4 is accepted."""
    log = SessionLog()
    log.admit(_config(3))
    with pytest.raises(ReplayedSession, match=f"round {round_index} is not after round 3"):
        log.admit(_config(round_index, seed=1))
    log.admit(_config(4, seed=2))
    assert log.last_round == 4


def test_round_zero_is_a_round_like_any_other():
    """The first round of a run has index 0: joining it records 0 as the last round, so a
    second session of round 0 is refused (an empty log is not the same as round 0 joined)."""
    log = SessionLog()
    assert log.last_round is None
    log.admit(_config(0))
    assert log.last_round == 0
    with pytest.raises(ReplayedSession):
        log.admit(_config(0, seed=1))


def test_check_changes_nothing_and_admit_records():
    """``check`` only asks; ``admit`` records the session and its round."""
    log = SessionLog()
    config = _config(2)
    log.check(config)
    log.check(config)
    assert len(log) == 0 and log.last_round is None
    log.admit(config)
    assert len(log) == 1 and log.last_round == 2


def test_a_refused_session_is_not_recorded():
    """A refused admission leaves the log as it was (the last round does not move back)."""
    log = SessionLog()
    log.admit(_config(5))
    with pytest.raises(ReplayedSession):
        log.admit(_config(1, seed=1))
    assert len(log) == 1 and log.last_round == 5


def test_a_saved_log_refuses_what_the_original_refuses():
    """The log survives a restart of the node (Flower keeps ``to_bytes`` in the node's state):
    the restored log refuses the same session ids and rounds and accepts the same next round."""
    log = SessionLog()
    joined = [_config(r, seed=r) for r in (1, 4, 7)]
    for config in joined:
        log.admit(config)
    restored = SessionLog.from_bytes(log.to_bytes())
    assert len(restored) == 3 and restored.last_round == 7
    for config in joined:
        with pytest.raises(ReplayedSession, match="was joined before"):
            restored.check(config)
    with pytest.raises(ReplayedSession, match="not after round 7"):
        restored.check(_config(7, seed=99))
    restored.admit(_config(8, seed=8))
    assert SessionLog.from_bytes(SessionLog().to_bytes()).last_round is None


def test_the_saved_log_is_plain_sorted_json():
    """``to_bytes`` is JSON (never pickle) with sorted hex session ids, so equal logs save to
    equal bytes."""
    a, b = SessionLog(), SessionLog()
    configs = [_config(r, seed=r) for r in (1, 2)]
    for config in configs:
        a.admit(config)
    b._sessions = {c.session_id for c in configs}
    b._last_round = 2
    assert a.to_bytes() == b.to_bytes()
    data = json.loads(a.to_bytes())
    assert data == {
        "sessions": sorted(c.session_id.hex() for c in configs),
        "last_round": 2,
    }


def _saved(sessions: object, last_round: object) -> bytes:
    return json.dumps({"sessions": sessions, "last_round": last_round}).encode()


GOOD_ID = "ab" * 32


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"not json", id="not-json"),
        pytest.param(b"[]", id="not-an-object"),
        pytest.param(json.dumps({"sessions": []}).encode(), id="no-last-round"),
        pytest.param(json.dumps({"last_round": 1}).encode(), id="no-sessions"),
        pytest.param(_saved([GOOD_ID[:-2]], 1), id="short-session-id"),
        pytest.param(_saved([GOOD_ID + "00"], 1), id="long-session-id"),
        pytest.param(_saved(["zz" * 32], 1), id="not-hex"),
        pytest.param(_saved([7], 1), id="id-not-a-string"),
        pytest.param(_saved(GOOD_ID, 1), id="sessions-not-a-list"),
        pytest.param(_saved([GOOD_ID], -1), id="negative-round"),
        pytest.param(_saved([GOOD_ID], 1.0), id="float-round"),
        pytest.param(_saved([GOOD_ID], True), id="bool-round"),
        pytest.param(_saved([GOOD_ID], "3"), id="string-round"),
    ],
)
def test_a_damaged_saved_log_is_refused_not_emptied(data):
    """A log that cannot be read raises LocalProtocolError: starting from an empty log instead
    would let the server rerun every session the client joined."""
    with pytest.raises(LocalProtocolError, match="session log is unreadable"):
        SessionLog.from_bytes(data)


@pytest.mark.parametrize("last_round", [None, 0, 12])
def test_every_valid_saved_log_is_read(last_round):
    """The accepted edge values: no round yet, round 0, any round; 32-byte session ids."""
    log = SessionLog.from_bytes(_saved([GOOD_ID], last_round))
    assert log.last_round == last_round and len(log) == 1
    with pytest.raises(ReplayedSession):
        log.check(_config(100, session_id=bytes.fromhex(GOOD_ID)))
