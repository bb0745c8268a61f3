"""When trace exporters fall behind, the lowest tiers are shed first and the first tier never."""

import pytest

from agent.sampling import shed_level


@pytest.mark.parametrize(("backlog", "tiers", "shed"), [
    (0, 3, 0),
    (50, 3, 0),      # at half: nothing yet
    (51, 3, 1),      # over half: the lowest tier
    (80, 3, 1),
    (81, 3, 2),      # over 80 %: every tier but the first
    (100, 3, 2),
    (51, 2, 1),
    (81, 2, 1),
    (51, 1, 0),      # one tier: it is the first, never shed
    (99, 1, 0),
])
def test_the_lowest_tiers_are_shed_as_the_backlog_grows_and_the_first_tier_never(backlog, tiers, shed):
    assert shed_level(backlog, 100, tiers) == shed
