import pytest

from lensgen.errors import UserError
from lensgen.sizes import LENS_1024_TABLE, parse_size, size_table, validate_size


def test_1024_table_is_the_published_one():
    assert size_table(1024) == list(LENS_1024_TABLE)
    assert (1472, 736) in size_table(1024) and (736, 1472) in size_table(1024)


def test_1440_class_scales_the_table():
    table = size_table(1440)
    assert (1440, 1440) in table and (2080, 1040) in table and (1040, 2080) in table
    for h, w in table:
        assert h % 16 == 0 and w % 16 == 0 and 0.5 <= w / h <= 2


@pytest.mark.parametrize("base,multiple", [(512, 16), (768, 16), (64, 8), (128, 8)])
def test_every_class_has_nine_valid_ratios(base, multiple):
    table = size_table(base, multiple)
    assert len(table) == 9
    ratios = [w / h for h, w in table]
    assert ratios == sorted(ratios) and ratios[0] == pytest.approx(0.5) and ratios[-1] == pytest.approx(2.0)
    for h, w in table:
        validate_size(h, w, multiple)


def test_validate_size_errors_say_what_is_allowed():
    assert validate_size(768, 1024) == (768, 1024)
    with pytest.raises(UserError, match="multiples of 16"):
        validate_size(1000, 1024)
    with pytest.raises(UserError, match="outside 1:2 .. 2:1"):
        validate_size(512, 1536)
    with pytest.raises(UserError, match="at most 1440"):
        validate_size(2080, 1040, max_side=1440)


def test_parse_size_is_width_first():
    assert parse_size("1024x768") == (768, 1024)
    with pytest.raises(UserError, match="WIDTHxHEIGHT"):
        parse_size("big")
