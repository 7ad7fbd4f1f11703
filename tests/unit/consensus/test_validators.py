"""ValidatorSet: validation, thresholds by power, hash, and the weighted round-robin proposer."""

from __future__ import annotations

from collections import Counter

import pytest

from node.consensus import InvalidValidatorSet, Validator, ValidatorSet
from tests.unit.consensus.helpers import addr, make_set


def test_rejects_empty_duplicate_and_non_positive_power() -> None:
    with pytest.raises(InvalidValidatorSet) as e:
        ValidatorSet([])
    assert "at least one" in e.value.problem
    v = Validator(addr(0), b"k" * 32, 1)
    with pytest.raises(InvalidValidatorSet) as e:
        ValidatorSet([v, v])
    assert "duplicate" in e.value.problem
    with pytest.raises(InvalidValidatorSet) as e:
        ValidatorSet([Validator(addr(1), b"k" * 32, 0)])
    assert "non-positive power 0" in e.value.problem


def test_sorted_by_address_and_lookup() -> None:
    vs = ValidatorSet([Validator(addr(2), b"c" * 32, 1), Validator(addr(0), b"a" * 32, 2)])
    assert [v.address for v in vs] == [addr(0), addr(2)]
    assert vs.get(addr(2)) == Validator(addr(2), b"c" * 32, 1)
    assert vs.get(addr(1)) is None
    assert vs.power_of(addr(1)) == 0
    assert vs.total_power == 3
    assert addr(0) in vs and addr(1) not in vs


@pytest.mark.parametrize(
    ("total_powers", "quorum", "one_third"),
    [([1, 1, 1, 1], 3, 2), ([1] * 7, 5, 3), ([1] * 10, 7, 4), ([1, 2, 3], 5, 3), ([3], 3, 2)],
)
def test_thresholds_are_strictly_more_than_two_thirds_and_one_third(
    total_powers: list[int], quorum: int, one_third: int
) -> None:
    vs = make_set(total_powers)
    assert vs.quorum == quorum
    assert vs.has_quorum(quorum) and not vs.has_quorum(quorum - 1)
    assert vs.one_third == one_third
    assert vs.has_one_third(one_third) and not vs.has_one_third(one_third - 1)


def test_hash_is_deterministic_and_covers_power_and_key() -> None:
    a = make_set([1, 2, 3])
    assert a.hash() == make_set([1, 2, 3]).hash()
    assert a.hash() != make_set([1, 2, 4]).hash()
    other_key = ValidatorSet([Validator(v.address, b"z" * 32, v.power) for v in a])
    assert a.hash() != other_key.hash()
    assert a == make_set([1, 2, 3]) and a != make_set([1, 2, 4])


def test_proposer_frequencies_are_proportional_to_power() -> None:
    powers = [1, 2, 3, 4]
    vs = make_set(powers)
    period = sum(powers)
    for start in (0, 5, 1000):
        counts = Counter(vs.proposer(h, 0).address for h in range(start, start + period * 3))
        assert [counts[addr(i)] for i in range(4)] == [3 * p for p in powers]


def test_proposer_is_a_pure_function_of_set_height_and_round() -> None:
    a, b = make_set([5, 1, 2]), make_set([5, 1, 2])
    late_first = [a.proposer(1000, 3).address, a.proposer(1, 0).address]
    assert late_first == [b.proposer(1000, 3).address, b.proposer(1, 0).address]
    assert [a.proposer(h, r) for h in range(1, 30) for r in range(4)] == [
        b.proposer(h, r) for h in range(1, 30) for r in range(4)
    ]
    assert a.proposer(7, 2) == a.proposer(8, 1)  # the schedule advances by height + round


def test_equal_powers_rotate_round_robin() -> None:
    vs = make_set([1, 1, 1, 1])
    assert [vs.proposer(1, r).address for r in range(5)] == [addr(1), addr(2), addr(3), addr(0), addr(1)]


def test_smooth_schedule_spreads_a_heavy_validator() -> None:
    vs = make_set([3, 1, 1, 1])
    seq = [vs.proposer(h, 0).address for h in range(6)]
    assert seq == [addr(0), addr(1), addr(0), addr(2), addr(3), addr(0)]  # never twice in a row


def test_huge_powers_are_scaled_for_the_schedule_but_keep_proportions() -> None:
    vs = make_set([10**9, 3 * 10**9 + 7])
    counts = Counter(vs.proposer(h, 0).address for h in range(4000))
    assert 900 < counts[addr(0)] < 1100


def test_negative_height_or_round_is_rejected() -> None:
    with pytest.raises(ValueError, match="negative"):
        make_set([1]).proposer(-1, 0)
