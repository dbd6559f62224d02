"""The config dataclass is the CLI and config.json; --resume may change only what does not change the run."""
import dataclasses
import json

import pytest

from lowlevel.config import Config, ConfigError


def test_every_field_is_a_flag_with_help():
    p = Config.parser()
    flags = {a.dest: a for a in p._actions if a.dest != "help"}
    assert set(flags) == {f.name for f in dataclasses.fields(Config)}
    assert all(a.help for a in flags.values())


def test_flags_parse_and_report_what_was_given():
    cfg, given = Config.from_args(["--epochs", "3", "--alpha", "0.5", "--no-augment", "--resume"])
    assert cfg.epochs == 3 and cfg.alpha == 0.5 and cfg.augment is False and cfg.resume is True
    assert given == {"epochs", "alpha", "augment", "resume"}
    at_default = ["--epochs", str(Config().epochs), "--augment"]
    assert Config.from_args(at_default)[1] == {"epochs", "augment"}  # even at the default


def test_json_round_trip(tmp_path):
    cfg = Config(epochs=7, lr=0.05, run_name="x")
    cfg.to_json(tmp_path / "config.json")
    assert Config.from_json(tmp_path / "config.json") == cfg


def test_a_config_json_from_before_a_setting_existed_keeps_how_it_was_trained(tmp_path):
    """A run saved before --cutout existed was trained without it: resuming it must not switch it on."""
    old = dataclasses.asdict(Config(epochs=7, run_name="x"))
    del old["cutout"]
    (tmp_path / "config.json").write_text(json.dumps(old))
    assert Config.from_json(tmp_path / "config.json") == Config(epochs=7, run_name="x", cutout=0)
    assert Config().cutout == 16  # while new runs get the default


def test_bad_json_is_one_sentence(tmp_path):
    (tmp_path / "config.json").write_text('{"epochs": 3, "colour": "red"}')
    with pytest.raises(ConfigError, match=r"config.json: has unknown settings \['colour'\]"):
        Config.from_json(tmp_path / "config.json")
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match="has unknown settings"):
        Config.from_json(tmp_path / "config.json")
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="cannot be read as a run's config"):
        Config.from_json(tmp_path / "config.json")


def test_resume_keeps_the_run_and_takes_only_resumable_flags():
    saved = Config(data="/d", epochs=9, alpha=0.5, run_name="r")
    given, explicit = Config.from_args(["--resume", "--run-name", "r", "--max-steps", "5"])
    cfg = saved.resumed_with(given, explicit)
    assert cfg.data == "/d" and cfg.epochs == 9 and cfg.alpha == 0.5 and cfg.max_steps == 5 and cfg.resume
    given, explicit = Config.from_args(["--resume", "--epochs", "20"])
    with pytest.raises(ConfigError, match="the run was made with --epochs 9, not 20"):
        saved.resumed_with(given, explicit)
    given, explicit = Config.from_args(["--resume", "--epochs", "9"])  # the same value is fine
    assert saved.resumed_with(given, explicit).epochs == 9


@pytest.mark.parametrize("changes, message", [
    ({"epochs": 0}, "--epochs must be greater than 0"),
    ({"batch_size": -1}, "--batch-size must be greater than 0"),
    ({"optimizer": "lamb"}, "--optimizer must be sgd or adam"),
    ({"label_smoothing": 1.0}, r"--label-smoothing must be in \[0, 1\)"),
    ({"alpha": 0.0}, "--alpha must be greater than 0"),
    ({"val_size": -5}, "must not be negative"),
    ({"cutout": 33}, "--cutout must be between 0 and 32 pixels"),
    ({"cutout": -1}, "--cutout must be between 0 and 32 pixels"),
])
def test_check(changes, message):
    with pytest.raises(ConfigError, match=message):
        dataclasses.replace(Config(), **changes).check()
