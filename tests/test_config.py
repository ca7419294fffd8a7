import pytest

from ltvrec.config import RunConfig


def test_defaults_are_valid():
    cfg = RunConfig()
    assert cfg.source == "synthetic" and cfg.top_n == 10 and cfg.horizon_days == 90


def test_unknown_keys_are_rejected():
    with pytest.raises(ValueError, match="unknown config keys: bogus"):
        RunConfig.from_dict({"bogus": 1})


@pytest.mark.parametrize(
    "values, message",
    [
        ({"top_n": "ten"}, "top_n"),
        ({"top_n": 0}, "top_n"),
        ({"source": "csv"}, "source"),
        ({"source": "events"}, "needs a path"),
        ({"as_of": "22/11/2026"}, "as_of"),
        ({"top_n": True}, "top_n"),
    ],
)
def test_bad_values_name_the_key(values, message):
    with pytest.raises(ValueError, match=message):
        RunConfig.from_dict(values)


def test_round_trip(tmp_path):
    cfg = RunConfig.from_dict({"source": "events", "path": "/x.parquet", "top_n": 5, "lr": 1})
    cfg.save(tmp_path)
    assert RunConfig.load(tmp_path) == cfg
