"""Run configuration: defaults, TOML round trip, overrides, and errors that name key and value."""

import pytest

from fl.core.config import ModelName, RunConfig, load_config, parse_toml
from fl.errors import ConfigError, ConfigFileError


def test_defaults_are_the_documented_federation():
    """No flags: 10 clients, Dirichlet(0.5) digits, 20 rounds, dropouts, secure aggregation."""
    config = RunConfig()
    assert (config.training.clients, config.training.rounds) == (10, 20)
    assert (config.data.dataset.value, config.data.partition.value, config.data.alpha) == (
        "digits",
        "dirichlet",
        0.5,
    )
    assert config.secure.enabled and config.secure.dropout > 0


def test_toml_round_trip(tmp_path):
    """to_toml() and load_config() give back an equal configuration."""
    config = RunConfig().with_overrides(
        {"training.rounds": 3, "model.name": "cnn", "secure.threshold": 4, "out": "x"}
    )
    path = tmp_path / "c.toml"
    path.write_text(config.to_toml())
    assert load_config(path) == config
    assert load_config(path).model.name is ModelName.CNN


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"training.rounds": -1}, "training.rounds"),
        ({"training.rounds": 0}, "training.rounds"),
        ({"training.fraction": 0.0}, "training.fraction"),
        ({"training.fraction": 1.5}, "training.fraction"),
        ({"model.name": "transformer"}, "model.name"),
        ({"secure.threshold": 11}, "secure.threshold"),
        ({"secure.dropout": 1.0}, "secure.dropout"),
        ({"data.alpha": 0}, "data.alpha"),
        ({"data.dataset": "npz"}, "data.path"),
        ({"device": "tpu"}, "device"),
        ({"training.min_clients": 1}, "training.min_clients"),
        ({"training.typo": 1}, "training.typo"),
    ],
)
def test_invalid_values_name_the_key(overrides, key):
    """Each bad value raises ConfigError whose message starts with the key and shows the value."""
    with pytest.raises(ConfigError) as error:
        RunConfig().with_overrides(overrides)
    assert error.value.key == key
    assert str(error.value).startswith(f"{key} = ")


def test_bad_toml_and_missing_file(tmp_path):
    """Unreadable or missing configuration files are ConfigErrors."""
    with pytest.raises(ConfigError):
        parse_toml("not = [valid")
    with pytest.raises(ConfigError, match="existing TOML file"):
        load_config(tmp_path / "nope.toml")


def test_cohort_size_respects_fraction_and_minimum():
    """Cohort = round(fraction * clients), at least min_clients, at most clients."""
    config = RunConfig().with_overrides(
        {
            "training.clients": 50,
            "training.fraction": 0.1,
            "training.min_clients": 3,
            "policy.min_clients": 3,
        }
    )
    assert config.training.cohort_size == 5
    config = config.with_overrides({"training.fraction": 0.01})
    assert config.training.cohort_size == 3


def test_per_round_count_overrides_the_fraction():
    """A count of clients per round wins over the fraction; out-of-range counts are errors."""
    config = RunConfig().with_overrides({"training.clients": 40, "training.per_round": 7})
    assert config.training.cohort_size == 7
    with pytest.raises(ConfigError, match=r"training\.per_round"):
        config.with_overrides({"training.per_round": 41})


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[training]\nrounds = 3.0", "training.rounds = 3.0 is invalid: an integer (got a float"),
        ("[training]\nrounds = true", "training.rounds = true is invalid: an integer (got a"),
        ('[secure]\nenabled = "false"', 'secure.enabled = "false" is invalid: true or false'),
        ("[secure]\nenabled = 0", "secure.enabled = 0 is invalid: true or false"),
        (
            '[training]\nlearning_rate = "0.1"',
            'training.learning_rate = "0.1" is invalid: a number',
        ),
        ("[training]\nlearning_rate = inf", "training.learning_rate = inf is invalid: a finite"),
        ("[model]\nname = 1", "model.name = 1 is invalid: a string"),
        ("seed = 1.5", "seed = 1.5 is invalid: an integer"),
        ("out = 3", "out = 3 is invalid: a string"),
    ],
)
def test_toml_types_are_strict(toml, message):
    """`rounds = 3.0` crashed after creating the run folder, `rounds = true` ran 1 round,
    `enabled = "false"` was taken as true: every value must have its key's TOML type (no bool
    for an int, no string for a bool, no float for an int); the error names the file."""
    with pytest.raises(ConfigError) as error:
        parse_toml(toml, source="my.toml")
    assert str(error.value).startswith("my.toml: ")
    assert message in str(error.value)


def test_integers_are_accepted_where_numbers_are_wanted():
    """`learning_rate = 1` is the number 1.0 (an int is a number); numpy integers are ints."""
    import numpy as np

    config = parse_toml("[training]\nlearning_rate = 1")
    assert config.training.learning_rate == 1.0 and isinstance(config.training.learning_rate, float)
    assert RunConfig().with_overrides({"training.rounds": np.int64(4)}).training.rounds == 4


@pytest.mark.parametrize("key", ["epsilon", "noise_multiplier", "max_epsilon"])
def test_privacy_values_without_a_privacy_level_are_refused(key):
    """An epsilon, noise multiplier or budget with privacy.level = none trained with no DP at
    all: it is now an error naming the key and the missing level."""
    with pytest.raises(ConfigError, match=rf"privacy\.{key} = 2\.0 is invalid: it needs a privacy"):
        RunConfig().with_overrides({f"privacy.{key}": 2.0})


@pytest.mark.parametrize(
    "error",
    [
        ConfigError("privacy.epsilon", 0.5, "a target no noise level can reach", source="a.toml"),
        ConfigFileError("missing.toml", "no such file"),
    ],
    ids=["config", "config-file"],
)
def test_configuration_errors_cross_process_boundaries_intact(error):
    """A sweep's worker process raises a ConfigError for its point; the parent receives it by
    pickle and must report the same typed error, message and key (not a broken process pool)."""
    import pickle

    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error)
    assert str(copy) == str(error)
    assert (copy.key, copy.value, copy.allowed, copy.source) == (
        error.key,
        error.value,
        error.allowed,
        error.source,
    )
