"""The mixed-resolution batch sampler: determinism, mixing, resume, equal steps per rank, padding waste."""

import itertools

import pytest

from lensgen.data.bucket_sampler import MixedResolutionSampler

BUCKETS = [i % 27 for i in range(1000)] + [0] * 137  # uneven buckets
TOKENS = [16 + 4 * b for b in range(27)]
CLASSES = [b // 9 for b in range(27)]  # 3 size classes x 9 aspect ratios


def take(sampler, n):
    return list(itertools.islice(iter(sampler), n))


def test_deterministic_given_seed_and_different_across_seeds():
    a = take(MixedResolutionSampler(BUCKETS, TOKENS, 16, seed=3), 20)
    b = take(MixedResolutionSampler(BUCKETS, TOKENS, 16, seed=3), 20)
    c = take(MixedResolutionSampler(BUCKETS, TOKENS, 16, seed=4), 20)
    assert a == b and a != c


def test_mixed_batches_mix_buckets_and_grouped_do_not():
    mixed = take(MixedResolutionSampler(BUCKETS, TOKENS, 16, seed=0), 30)
    assert all(len({BUCKETS[i] for i in batch}) > 3 for batch in mixed)
    grouped = MixedResolutionSampler(BUCKETS, TOKENS, 16, seed=0, mode="grouped")
    for batch in take(grouped, 30):
        assert len({BUCKETS[i] for i in batch}) == 1
        assert grouped.padding_waste(batch) == 0.0
    s = MixedResolutionSampler(BUCKETS, TOKENS, 16, seed=0)
    assert 0.1 < sum(s.padding_waste(b) for b in mixed) / len(mixed) < 0.9


def test_class_batches_mix_ratios_of_one_size_class():
    sampler = MixedResolutionSampler(BUCKETS, TOKENS, 16, seed=0, mode="class", bucket_class=CLASSES)
    batches = take(sampler, sampler.batches_per_epoch())
    assert all(len({CLASSES[BUCKETS[i]] for i in batch}) == 1 for batch in batches)
    assert sum(len({BUCKETS[i] for i in batch}) > 3 for batch in batches) > len(batches) // 2
    assert {CLASSES[BUCKETS[batch[0]]] for batch in batches} == {0, 1, 2}
    mixed = take(MixedResolutionSampler(BUCKETS, TOKENS, 16, seed=0), 30)
    waste = sum(sampler.padding_waste(b) for b in batches) / len(batches)
    assert waste < sum(sampler.padding_waste(b) for b in mixed) / len(mixed)
    with pytest.raises(ValueError, match="bucket_class"):
        MixedResolutionSampler(BUCKETS, TOKENS, 16, mode="class")


def test_resume_mid_epoch_continues_exactly():
    straight = take(MixedResolutionSampler(BUCKETS, TOKENS, 16, seed=1), 100)  # crosses an epoch (71/epoch)
    first = MixedResolutionSampler(BUCKETS, TOKENS, 16, seed=1)
    head = take(first, 40)
    state = first.state_dict()
    second = MixedResolutionSampler(BUCKETS, TOKENS, 16, seed=1)
    second.load_state_dict(state)
    assert head + take(second, 60) == straight
    with pytest.raises(ValueError, match="seed"):
        MixedResolutionSampler(BUCKETS, TOKENS, 16, seed=2).load_state_dict(state)


@pytest.mark.parametrize("mode", ["mixed", "class", "grouped"])
def test_ranks_get_equal_disjoint_batches(mode):
    ranks = [MixedResolutionSampler(BUCKETS, TOKENS, 8, seed=0, rank=r, world_size=3, mode=mode, bucket_class=CLASSES)
             for r in range(3)]
    per_epoch = {r.batches_per_epoch() for r in ranks}
    assert len(per_epoch) == 1  # same number of steps everywhere: no hang at the epoch end
    n = per_epoch.pop()
    epoch = [take(r, n) for r in ranks]
    seen = [i for batches in epoch for batch in batches for i in batch]
    assert len(seen) == len(set(seen))  # no item twice within an epoch
    assert all(len(batch) == 8 for batches in epoch for batch in batches)


def test_too_few_items_is_an_error():
    with pytest.raises(ValueError, match="too few"):
        MixedResolutionSampler([0, 1, 2], TOKENS, 4)
