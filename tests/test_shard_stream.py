"""Streaming shards: every sample once per epoch, buckets right, ranks disjoint, exact resume from a tiny state."""

import json
from itertools import islice

import pytest
from PIL import Image

from lensgen.data.buckets import BucketTable
from lensgen.data.shard_stream import SampleRef, ShardStream
from lensgen.data.shards import shard_path, write_shard
from lensgen.errors import UserError

TABLE = BucketTable(bases=(32, 48, 64), multiple=8)
SIZES = [(32, 32), (48, 48), (64, 64), (32, 64), (64, 32), (40, 56), (80, 40)]  # (h, w)


def make_shards(folder, n_shards=3, per_shard=10):
    """Shards of solid images whose colour encodes the sample number, in several sizes."""
    n = 0
    for s in range(n_shards):
        samples = []
        for _ in range(per_shard):
            h, w = SIZES[n % len(SIZES)]
            image = Image.new("RGB", (w, h), (n % 256, 7, 9))
            samples.append({"__key__": f"s{n:04d}", "png": image,
                            "json": {"captions": {"dense": f"sample {n} dense", "short": f"sample {n}"}}})
            n += 1
        write_shard(shard_path(folder, s), samples)
    return n


def keys(batches):
    return [r.key for b in batches for r in b]


def test_one_epoch_reads_every_sample_once_and_buckets_by_aspect(tmp_path):
    n = make_shards(tmp_path)
    stream = ShardStream(tmp_path, TABLE, batch_size=5, patch=8, shuffle_buffer=0)
    batches = list(islice(iter(stream), n // 5))
    assert sorted(keys(batches)) == [f"s{i:04d}" for i in range(n)]
    for ref in (r for b in batches for r in b):
        h, w = SIZES[int(ref.key[1:]) % len(SIZES)]
        assert ref.bucket == TABLE.nearest(h, w).index
        image, captions = stream.load(ref)
        bucket = TABLE[ref.bucket]
        assert (image.height, image.width) == (bucket.height, bucket.width)
        assert captions["short"] == f"sample {int(ref.key[1:])}"
        assert image.getpixel((0, 0))[0] == int(ref.key[1:]) % 256
    # the next epoch reads the shards in another order
    second = list(islice(iter(stream), n // 5))
    assert sorted(keys(second)) == sorted(keys(batches)) and keys(second) != keys(batches)


@pytest.mark.parametrize("mode", ["grouped", "class"])
def test_grouped_and_class_batches_stay_in_one_group(tmp_path, mode):
    make_shards(tmp_path, per_shard=20)
    stream = ShardStream(tmp_path, TABLE, batch_size=3, patch=8, mode=mode, shuffle_buffer=6)
    for batch in islice(iter(stream), 20):
        groups = {r.bucket if mode == "grouped" else r.bucket // TABLE.num_ratios for r in batch}
        assert len(batch) == 3 and len(groups) == 1
        assert 0 <= stream.padding_waste(batch) < (1e-9 if mode == "grouped" else 0.2)


def test_ranks_read_disjoint_shards_and_run_equal_steps(tmp_path):
    make_shards(tmp_path, n_shards=3, per_shard=6)  # 3 shards over 2 ranks: uneven on purpose
    streams = [ShardStream(tmp_path, TABLE, batch_size=4, patch=8, rank=r, world_size=2, shuffle_buffer=1)
               for r in (0, 1)]
    orders = [s.shard_order(0) for s in streams]
    assert set(orders[0]).isdisjoint(orders[1]) and sorted(orders[0] + orders[1]) == [0, 1, 2]
    for stream, order in zip(streams, orders):  # a first batch comes from the rank's own shards only
        assert {r.shard for r in next(iter(stream))} <= set(order)
    # the stream never ends: both ranks give as many steps as asked, however few samples a rank holds
    assert all(len(list(islice(iter(s), 25))) == 25 for s in streams)
    with pytest.raises(UserError, match="at least one per rank"):
        ShardStream(tmp_path, TABLE, batch_size=4, patch=8, rank=0, world_size=4)


@pytest.mark.parametrize("taken", [1, 4, 7])  # mid-shard, mid-epoch, after an epoch boundary
def test_resume_from_the_state_continues_exactly(tmp_path, taken):
    make_shards(tmp_path)
    stream = ShardStream(tmp_path, TABLE, batch_size=4, patch=8, shuffle_buffer=5, seed=3)
    it = iter(stream)
    list(islice(it, taken))
    state = json.loads(json.dumps(stream.state_dict()))  # it goes into the checkpoint's meta.json
    assert len(json.dumps(state)) < 20_000
    expected = list(islice(it, 6))
    images = [stream.load(r)[0].tobytes() for r in expected[0]]

    resumed = ShardStream(tmp_path, TABLE, batch_size=4, patch=8, shuffle_buffer=5, seed=3)
    resumed.load_state_dict(state)
    got = list(islice(iter(resumed), 6))
    assert got == expected
    # buffered samples are re-read by byte offset after the restart
    assert [resumed.load(r)[0].tobytes() for r in got[0]] == images
    with pytest.raises(ValueError, match="seed"):
        ShardStream(tmp_path, TABLE, batch_size=4, patch=8, seed=4).load_state_dict(state)


def test_sample_ref_round_trips_and_bad_samples_name_shard_and_key(tmp_path):
    ref = SampleRef(2, "dir/k", (("png", 512, 100), ("json", 1024, 30)), 5)
    assert SampleRef.from_json(json.loads(json.dumps(ref.to_json()))) == ref
    write_shard(shard_path(tmp_path, 0), [{"__key__": "nojson", "png": Image.new("RGB", (8, 8))}])
    stream = ShardStream(tmp_path, TABLE, batch_size=1, patch=8, shuffle_buffer=0)
    with pytest.raises(UserError, match=r"shard-000000.tar: sample nojson lacks an image"):
        next(iter(stream))


def test_validation_items_are_fixed_and_one_per_bucket(tmp_path):
    make_shards(tmp_path)
    stream = ShardStream(tmp_path, TABLE, batch_size=4, patch=8)
    first = stream.validation_items(4)
    list(islice(iter(stream), 3))
    again = stream.validation_items(4)
    assert first == again and len({r.bucket for r in first}) == 4
    assert all(stream.load(r)[1]["dense"].endswith("dense") for r in again)
