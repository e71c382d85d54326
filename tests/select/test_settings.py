import pytest

from fastcsi.errors import FastCSIError
from fastcsi.pipeline.settings import SampleSpec, SelectSettings, parse_samples, parse_seeds, stats_key


def test_parse_seeds():
    assert parse_seeds("0,1,2") == (0, 1, 2)
    assert parse_seeds(" 3 , 7") == (3, 7)
    assert parse_seeds("5") == (5,)


@pytest.mark.parametrize("bad", ["", "a,b", "1,,2", "-1", "1,1", "0.5"])
def test_parse_seeds_rejects(bad):
    with pytest.raises(FastCSIError, match="--seeds"):
        parse_seeds(bad)


def test_parse_samples():
    assert parse_samples("10000") == 10000
    assert parse_samples("10_000") == 10000
    assert parse_samples("all") is None
    assert parse_samples("ALL") is None
    assert parse_samples(5) == 5


@pytest.mark.parametrize("bad", ["0", "1", "-5", "ten", "1e3x", ""])
def test_parse_samples_rejects(bad):
    with pytest.raises(FastCSIError, match="--samples"):
        parse_samples(bad)


@pytest.mark.parametrize(
    "kw, option",
    [
        ({"agg": "median"}, "--agg"),
        ({"upstream_sampling": "stratified"}, "--upstream-sampling"),
        ({"kind": "triplet"}, "--kind"),
        ({"dtype": "float16"}, "--dtype"),
        ({"batch_size": 0}, "--batch-size"),
        ({"seeds": ()}, "--seeds"),
    ],
)
def test_settings_reject_bad_values(kw, option):
    with pytest.raises(FastCSIError, match=option):
        SelectSettings(**kw)


def test_paper_defaults():
    s = SelectSettings()
    assert s.samples == 10_000
    assert (s.upstream_sampling, s.downstream_sampling, s.agg) == ("balanced", "random", "flat")
    assert s.to_dict()["samples"] == 10_000
    assert SelectSettings(samples=None).to_dict()["samples"] == "all"


def test_sample_spec_collapses_seed_when_taking_everything():
    # A sample as large as the dataset is the dataset: no seed dependence, one cache entry.
    assert SampleSpec.make("random", 100, 3, dataset_size=50) == SampleSpec("all", None, None)
    assert SampleSpec.make("balanced", None, 3, dataset_size=50) == SampleSpec("all", None, None)
    assert SampleSpec.make("all", 10, 3, dataset_size=50) == SampleSpec("all", None, None)
    assert SampleSpec.make("balanced", 10, 3, dataset_size=50) == SampleSpec("balanced", 10, 3)


def test_stats_key_is_stable_and_sensitive():
    a = {"dataset": "abc", "seed": 0, "n": 10}
    assert stats_key(a) == stats_key(dict(reversed(list(a.items()))))
    assert stats_key(a) != stats_key({**a, "seed": 1})
    assert len(stats_key(a)) == 20
