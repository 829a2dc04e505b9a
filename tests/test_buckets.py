import math

import numpy as np
import pytest
from PIL import Image

from lensgen.data.buckets import BucketTable, nearest_bucket, resize_and_center_crop
from lensgen.sizes import size_table


def test_table_has_27_buckets_from_the_size_table():
    table = BucketTable()
    assert len(table) == 27
    assert [(b.height, b.width) for b in table if b.base == 1024] == size_table(1024, 16)
    assert [b.index for b in table] == list(range(27))
    assert {b.base for b in table} == {512, 768, 1024}
    assert all(b.height % 16 == 0 and b.width % 16 == 0 for b in table)
    assert table[13].tokens() == (768 // 16) * (768 // 16)


@pytest.mark.parametrize(
    "height,width,expected",
    [
        (1024, 1024, (1024, 1024)),
        (512, 512, (512, 512)),
        (700, 700, (768, 768)),  # log-area: 700^2 is nearer 768^2 than 512^2
        (600, 600, (512, 512)),
        (3000, 1500, (1472, 736)),  # 1:2 portrait, large
        (400, 800, (368, 736)),  # 2:1 landscape, small
        (100, 1000, (368, 736)),  # beyond 10:1 still lands in the widest ratio
        (1152, 864, (1152, 864)),
        (1000, 760, (1152, 864)),  # ratio 0.76 -> 3:4 slot; area ~0.76 MP -> 1024 class
    ],
)
def test_nearest_bucket(height, width, expected):
    b = nearest_bucket(height, width)
    assert (b.height, b.width) == expected


def test_ratio_choice_is_by_log_ratio():
    table = BucketTable()
    for b in table:  # every bucket is its own nearest bucket
        assert table.nearest(b.height, b.width) == b
    # symmetric: a portrait image and its transpose land in transposed buckets
    p, l = nearest_bucket(900, 500), nearest_bucket(500, 900)
    assert (p.height, p.width) == (l.width, l.height)
    ratios = sorted({round(math.log(b.ratio), 3) for b in table if b.base == 1024})
    assert len(ratios) == 9


def test_custom_bases_and_bad_sizes():
    table = BucketTable(bases=(64, 96), multiple=8)
    assert len(table) == 18 and table.nearest(64, 64).height == 64
    with pytest.raises(ValueError):
        nearest_bucket(0, 10)


def test_resize_and_center_crop_covers_and_centres():
    # a wide image with a red centre column: the crop to a square keeps the centre
    arr = np.zeros((100, 300, 3), np.uint8)
    arr[:, 140:160] = (255, 0, 0)
    out = resize_and_center_crop(Image.fromarray(arr), (64, 64))
    assert out.size == (64, 64)
    centre = np.asarray(out)[:, 32]
    assert (centre[:, 0] > 200).all() and (centre[:, 1] < 50).all()
    # upscaling a small portrait image to a landscape bucket still gives the exact size
    assert resize_and_center_crop(Image.new("RGB", (30, 50)), (368, 736)).size == (736, 368)


def test_vectorised_assignment_matches_the_scalar_rule():
    table = BucketTable()
    rng = np.random.default_rng(0)
    h, w = rng.integers(40, 4000, 3000), rng.integers(40, 4000, 3000)
    want = [table.nearest(int(a), int(b)).index for a, b in zip(h, w)]
    assert table.nearest_indices(h, w).tolist() == want
