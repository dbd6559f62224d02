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
    cfg = Config(epochs=7, lr=0.05, data="/d", steps_per_call=4)
    (tmp_path / "config.json").write_text(cfg.to_json())
    assert Config.from_json(tmp_path / "config.json") == cfg


def test_the_choices_of_one_command_are_never_saved_nor_read_back(tmp_path):
    """--max-steps and the like limit one command; saved, they would silently limit every --resume."""
    mine = Config(max_steps=351, resume=True, progress="bar", run_name="r", checkpoint_dir="/c",
                  from_checkpoint="ckpt-1")
    saved = json.loads(mine.to_json())
    assert not set(saved) & set(Config.INVOCATION)
    assert set(saved) == {f.name for f in dataclasses.fields(Config)} - set(Config.INVOCATION)
    old = {**saved, "max_steps": 351, "progress": "bar", "resume": True}  # as lowlevel wrote them before
    (tmp_path / "config.json").write_text(json.dumps(old))
    assert Config.from_json(tmp_path / "config.json") == Config()
    given, explicit = Config.from_args(["--resume", "--run-name", "r"])
    assert Config.from_json(tmp_path / "config.json").resumed_with(given, explicit).max_steps == 0


def test_a_config_json_value_of_the_wrong_type_is_one_sentence(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"epochs": "many"}))
    with pytest.raises(ConfigError, match="epochs is 'many', not a int"):
        Config.from_json(tmp_path / "config.json")


def test_a_config_json_from_before_a_setting_existed_keeps_how_it_was_trained(tmp_path):
    """A run saved before --cutout (or --tta, or --ema) existed was trained (and measured) without it: resuming
    or evaluating it must not switch it on."""
    old = dataclasses.asdict(Config(epochs=7))
    del old["cutout"], old["tta"], old["ema"]
    (tmp_path / "config.json").write_text(json.dumps(old))
    assert Config.from_json(tmp_path / "config.json") == Config(epochs=7, cutout=0, tta="none", ema=0.0)
    assert (Config().cutout, Config().tta, Config().ema) == (16, "flip", 0.999)  # while new runs get the defaults


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
    saved = Config(data="/d", epochs=9, alpha=0.5, run_name="r", steps_per_call=7)
    given, explicit = Config.from_args(["--resume", "--run-name", "r", "--max-steps", "5"])
    cfg = saved.resumed_with(given, explicit)
    assert cfg.data == "/d" and cfg.epochs == 9 and cfg.alpha == 0.5 and cfg.max_steps == 5 and cfg.resume
    assert cfg.steps_per_call == 7  # adjustable: the saved value unless given
    given, explicit = Config.from_args(["--resume", "--data", "/e", "--steps-per-call", "2"])
    cfg = saved.resumed_with(given, explicit)
    assert cfg.data == "/e" and cfg.steps_per_call == 2
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
    ({"lr": float("nan")}, "--lr must be a finite number"),
    ({"lr": float("inf")}, "--lr must be a finite number"),
    ({"val_size": -5}, "--val-size must not be negative"),
    ({"cutout": -1}, "--cutout must not be negative"),
    ({"precision": "float8"}, "--precision must be float32, bfloat16 or float16"),
    ({"run_name": "a/b"}, "must be a plain folder name"),
    ({"run_name": ".."}, "must be a plain folder name"),
    ({"from_checkpoint": "ckpt-3"}, "--from-checkpoint continues a run: add --resume"),
])
def test_check(changes, message):
    with pytest.raises(ConfigError, match=message):
        dataclasses.replace(Config(), **changes).check()


@pytest.mark.parametrize("changes, message", [
    ({"val_size": 100}, "--val-size 100 leaves no training image"),
    ({"batch_size": 81}, "--batch-size 81 is larger than the 80 training images"),
    ({"cutout": 33}, "--cutout 33 is larger than the 32-pixel image"),
])
def test_check_data(changes, message):
    with pytest.raises(ConfigError, match=message):
        dataclasses.replace(Config(val_size=20, batch_size=8), **changes).check_data(100, 32)
    Config(val_size=20, batch_size=80, cutout=32).check_data(100, 32)  # the limits themselves are fine
