"""Every rollout and wave transition: the allowed ones pass, every other one raises."""

from __future__ import annotations

import itertools

import pytest

from edgeops.errors import IllegalTransitionError
from edgeops.fleet.rollouts.status import (
    ACTION_FROM,
    ROLLOUT_TRANSITIONS,
    WAVE_TRANSITIONS,
    RolloutStatus,
    WaveStatus,
    check_action,
    check_rollout,
    check_wave,
)

ROLLOUT_PAIRS = list(itertools.product(RolloutStatus, RolloutStatus))
WAVE_PAIRS = list(itertools.product(WaveStatus, WaveStatus))


@pytest.mark.parametrize("cur,new", ROLLOUT_PAIRS, ids=[f"{a.value}->{b.value}" for a, b in ROLLOUT_PAIRS])
def test_rollout_transition(cur, new):
    if new in ROLLOUT_TRANSITIONS[cur]:
        check_rollout("r-1", cur, new)
    else:
        with pytest.raises(IllegalTransitionError) as e:
            check_rollout("r-1", cur, new)
        assert "r-1" in str(e.value) and cur.value in str(e.value) and new.value in str(e.value)


@pytest.mark.parametrize("cur,new", WAVE_PAIRS, ids=[f"{a.value}->{b.value}" for a, b in WAVE_PAIRS])
def test_wave_transition(cur, new):
    if new in WAVE_TRANSITIONS[cur]:
        check_wave("r-1", 2, cur, new)
    else:
        with pytest.raises(IllegalTransitionError) as e:
            check_wave("r-1", 2, cur, new)
        assert "wave 3" in str(e.value)  # idx 2 is the third wave: user-facing numbers count from 1


def test_expected_paths_exist():
    R, W = RolloutStatus, WaveStatus
    assert R.RUNNING in ROLLOUT_TRANSITIONS[R.CREATED]
    assert R.FINISHED in ROLLOUT_TRANSITIONS[R.RUNNING]
    assert R.ABORTED in ROLLOUT_TRANSITIONS[R.ABORTING]
    assert not ROLLOUT_TRANSITIONS[R.FINISHED] and not ROLLOUT_TRANSITIONS[R.ABORTED]
    assert W.HALTED in WAVE_TRANSITIONS[W.RUNNING] and W.RUNNING in WAVE_TRANSITIONS[W.HALTED]
    # every action target must itself be a legal transition from each allowed source
    targets = {"start": R.RUNNING, "pause": R.PAUSED, "resume": R.RUNNING, "promote": R.RUNNING, "abort": R.ABORTING}
    for action, sources in ACTION_FROM.items():
        for s in sources:
            assert targets[action] in ROLLOUT_TRANSITIONS[s], (action, s)


@pytest.mark.parametrize("action", sorted(ACTION_FROM))
def test_actions_allowed_only_from_their_states(action):
    for s in RolloutStatus:
        if s in ACTION_FROM[action]:
            check_action("r-9", action, s)
        else:
            with pytest.raises(IllegalTransitionError, match=f"cannot {action}"):
                check_action("r-9", action, s)
