"""Config files (engine/config_file.py) and `alexnet-lab presets`: a real YAML file, a run's own
config.json, precedence preset < file < flags, unknown keys named with the nearest valid one."""

from __future__ import annotations

import json
import math
import re
from dataclasses import fields
from datetime import timedelta
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fakedata
from alexnet_lab.cli import main
from alexnet_lab.engine.config import PRESETS, RECORD_TARGETS, TrainConfig, make_config
from alexnet_lab.engine.config_file import read_config_file, resolve_config
from alexnet_lab.errors import UserError


def test_a_preset_printed_as_yaml_reads_back_as_the_same_config(tmp_path, capsys):
    for name in PRESETS:
        assert main(["presets", name]) == 0
        path = tmp_path / f"{name}.yaml"
        path.write_text(capsys.readouterr().out)
        assert yaml.safe_load(path.read_text())["preset"] == name  # plain YAML, readable by any tool
        assert resolve_config(None, read_config_file(path), {}) == make_config(name)


def test_presets_lists_every_preset_with_its_target(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    for name in PRESETS:
        assert f"\n{name} " in out
    for name, target in RECORD_TARGETS.items():
        line = next(line for line in out.splitlines() if line.startswith(name + " "))
        assert f"{target:.3f}" in line
    assert "docs/RECORDS.md" in out  # measured numbers live there only


def test_an_unknown_preset_is_one_error_naming_the_nearest_whichever_way_it_is_asked_for(capsys):
    message = r"^Unknown preset 'speedrun94'. Did you mean 'speedrun-94'\?$"
    with pytest.raises(UserError, match=message):
        make_config("speedrun94")
    with pytest.raises(UserError, match=message):
        resolve_config("speedrun94", None, {})
    assert main(["presets", "speedrun94"]) == 2
    assert capsys.readouterr().err == "alexnet-lab presets: error: Unknown preset 'speedrun94'. Did you mean 'speedrun-94'?\n"


def test_flags_override_the_file_and_the_file_overrides_the_preset(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("preset: speedrun\nepochs: 2\nlr: 0.05\n")
    config = resolve_config(None, read_config_file(path), {"lr": 0.3, "epochs": None})
    assert (config.preset, config.epochs, config.lr) == ("speedrun", 2, 0.3)
    assert config.batch_size == PRESETS["speedrun"]["batch_size"]  # from the preset
    other = resolve_config("d2l", read_config_file(path), {})  # --preset beats the file's preset
    assert (other.preset, other.model, other.epochs) == ("d2l", "alexnet", 2)


def test_an_unknown_key_names_the_nearest_valid_one(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("epochs: 2\nlearning_rate: 0.1\nbatchsize: 64\n")
    with pytest.raises(UserError, match="unknown key 'learning_rate'"):
        read_config_file(path)
    path.write_text("batchsize: 64\n")
    with pytest.raises(UserError, match="unknown key 'batchsize'. Did you mean 'batch_size'"):
        read_config_file(path)


@pytest.mark.parametrize("text, message", [("- 1\n- 2\n", "holds a list"), ("epochs: [1\n", "not valid YAML"),
                                           ("epochs: -1\n", "epochs")])
def test_a_bad_file_is_a_user_error(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match=message):
        resolve_config(None, read_config_file(path), {})


def test_a_missing_file_says_how_to_make_one(tmp_path):
    with pytest.raises(UserError, match="alexnet-lab presets NAME"):
        read_config_file(tmp_path / "nope.yaml")


def test_a_runs_own_config_json_repeats_the_run(tmp_path, monkeypatch):
    monkeypatch.setenv("ALEXNET_LAB_OFFLINE", "1")
    data = fakedata.make_dataset(tmp_path / "data", n_train=64, n_test=32)
    first, second = tmp_path / "first", tmp_path / "second"
    with fakedata.one_thread():
        assert main(["train", "--model", "lenet", "--data-dir", str(data), "--epochs", "1", "--batch-size", "32",
                     "--lr", "0.05", "--device", "cpu", "--out", str(first), "--no-report"]) == 0
        assert main(["train", "--config", str(first / "config.json"), "--out", str(second), "--no-report"]) == 0
    saved = [json.loads((run / "config.json").read_text()) for run in (first, second)]
    for config in saved:
        config.pop("resolved")
    assert saved[0] == saved[1]
    assert [json.loads(line)["train_loss"] for line in (second / "metrics.jsonl").read_text().splitlines()] == \
           [json.loads(line)["train_loss"] for line in (first / "metrics.jsonl").read_text().splitlines()]


def test_a_cpu_budget_runs_config_json_is_no_unknown_preset():
    """make run saves its budget under a label (one-epoch-cpu-budget) that is no preset: its complete
    config.json still resolves, to itself; a partial file naming no preset is still refused."""
    saved = make_config("one-epoch", limit_train=2336, time_budget_s=189.3).replace(
        preset="one-epoch-cpu-budget").to_dict()
    config = resolve_config(None, saved, {"seed": 1})
    assert config.preset == "one-epoch-cpu-budget" and config.batch_size == 32 and config.seed == 1
    assert config.replace(seed=0).to_dict() == saved
    with pytest.raises(UserError, match="Unknown preset 'one-epoch-cpu-budget'"):
        resolve_config(None, {"preset": "one-epoch-cpu-budget", "epochs": 2}, {})
    with pytest.raises(UserError, match="Unknown preset 'one-epoch-cpu-budget'"):
        resolve_config("one-epoch-cpu-budget", saved, {})


def test_config_with_resume_is_refused(tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path), "--config", str(tmp_path / "c.yaml")]) == 2
    assert "--config cannot be combined with --resume" in capsys.readouterr().err


# --- bounded input, bounded messages --------------------------------------------------------------

def alias_bomb() -> str:
    """441 bytes of YAML whose `model` would be 10^9 items: nine levels of ten aliases of the level below."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    return "\n".join(lines + ["model: *a8"]) + "\n"


def refusal(tmp_path, text: str | bytes, name: str = "c.yaml") -> str:
    """The UserError message reading `text` as a config file gives (it must give one)."""
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(UserError) as refused:
        resolve_config(None, read_config_file(path), {})
    return str(refused.value)


@pytest.mark.parametrize("text", [alias_bomb(), "epochs: &e 2\n", "base: &b {epochs: 2}\nlr: 0.1\n",
                                  "<<: *undefined\n", "epochs: 2\nlr: !!float &x 0.1\n"])
def test_yaml_anchors_and_aliases_are_refused_before_anything_is_expanded(tmp_path, text):
    message = refusal(tmp_path, text)
    assert "anchor or alias (line " in message and "write each value out in full" in message
    assert "\n" not in message and len(message) < 300


@pytest.mark.parametrize("argv", [["train"], ["record"], ["record", "--candidate", "speedrun"],
                                  ["sweep", "--batch-sizes", "32"]])
def test_train_record_and_sweep_refuse_an_alias_bomb_in_one_line(tmp_path, capsys, argv):
    """Each command reads --config through the one reader: one line, exit 2, nothing written."""
    path = tmp_path / "bomb.yaml"
    path.write_text(alias_bomb())
    out = tmp_path / "out"
    assert main([*argv, "--config", str(path), "--out", str(out)] if argv[0] != "record" else
                [*argv, "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "uses a YAML anchor or alias (line 1)" in err and len(err) < 300
    assert not out.exists()


@pytest.mark.parametrize("name, text", [("deep.json", "[" * 200_000 + "]" * 200_000),
                                        ("deep.json", '{"model": ' + "[" * 200_000 + "]" * 200_000 + "}"),
                                        ("deep.yaml", "model: " + "[" * 200_000 + "]" * 200_000 + "\n"),
                                        ("deep.yaml", "".join(f"{' ' * i}k{i}:\n" for i in range(1000)))])
def test_a_config_nested_200000_levels_deep_is_a_user_error(tmp_path, name, text):
    message = refusal(tmp_path, text, name)
    assert "nests lists or mappings too deeply" in message and "one 'key: value' line per setting" in message


@pytest.mark.parametrize("text, shown", [("preset: [1, 2]\n", "preset to a list of 2 item(s)"),
                                         ("preset: {a: 1}\n", "preset to a dict of 1 item(s)"),
                                         ('{"epochs": [1]}', "epochs to a list of 1 item(s)"),
                                         ("lr: !!set {0.1}\n", "lr to a set of 1 item(s)")])
def test_a_list_or_mapping_where_a_setting_takes_one_value_is_refused(tmp_path, text, shown):
    message = refusal(tmp_path, text, "c.json" if text.startswith("{") else "c.yaml")
    assert shown in message and "give each setting one value" in message


@pytest.mark.parametrize("name, text, flag", [("c.json", '{"data_dir": "a\\u0000b"}', "--data-dir"),
                                              ("c.yaml", 'data_dir: "a\\0b"\n', "--data-dir"),
                                              ("c.yaml", 'data: "imagefolder:x\\0"\n', "--data"),
                                              ("c.json", '{"preset": "d2l\\u0000"}', "--preset")])
def test_a_nul_character_in_a_text_setting_is_refused(tmp_path, name, text, flag):
    message = refusal(tmp_path, text, name)
    assert f"{flag} must be text without NUL characters or lone surrogates" in message and "\\x00" in message


def test_a_4300_digit_number_gets_the_message_its_flag_gets(tmp_path, capsys):
    digits = "9" * 4300
    assert main(["train", "--seed", digits]) == 2
    flag_message = capsys.readouterr().err.split("error: ", 1)[1].strip()
    for name, text in (("c.yaml", f"seed: {digits}\n"), ("c.json", f'{{"seed": {digits}}}')):
        assert refusal(tmp_path, text, name) == flag_message
    assert flag_message == "Invalid configuration: --seed must be in [0, 4294967295], got a 14285-bit whole number."
    assert "a 14285-bit whole number" in refusal(tmp_path, f"epochs: {digits}\n")  # a float setting's too


@pytest.mark.parametrize("name, text", [("c.yaml", "seed: " + "9" * 4400 + "\n"),
                                        ("c.yaml", "seed: " + "1:" * 3000 + "1\n"),  # base 60
                                        ("c.json", '{"seed": ' + "9" * 4400 + "}")])
def test_a_number_longer_than_python_reads_is_refused_by_its_length(tmp_path, name, text):
    message = refusal(tmp_path, text, name)
    assert "digits" in message and "more than any setting takes: fix that value" in message


@pytest.mark.parametrize("text, message", [
    (b"epochs: 2\nlr: \xff\n", "is not UTF-8 text (invalid start byte at byte 15). Save it as UTF-8."),
    ("epochs: 2001-13-01\n", "is not valid YAML (month must be in 1..12): fix it there"),
    ("epochs: 2001-01-01\n", "--epochs must be a number, got a date."),
    ("lr: !!binary aGVsbG8=\n", "--lr must be a number, got a bytes."),
    ("- 1\n", "holds a list of 1 item(s), not a mapping of settings: write one 'key: value' line per setting"),
])
def test_what_yaml_reads_but_no_setting_takes_is_named(tmp_path, text, message):
    assert message in refusal(tmp_path, text)


def test_a_config_larger_than_a_mebibyte_or_not_a_file_is_refused(tmp_path):
    assert "larger than 1,048,576 bytes" in refusal(tmp_path, "epochs: 2\n" + "#" * (1 << 20))
    with pytest.raises(UserError, match="is not a config file"):
        read_config_file(tmp_path)
    with pytest.raises(UserError, match="a file name cannot hold a NUL character"):
        read_config_file(str(tmp_path / "c\0.yaml"))


# --- fuzz: any file is a config or one short UserError ------------------------------------------------

FUZZ = settings(max_examples=60, deadline=timedelta(seconds=5), derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.large_base_example])
# A message that says what to fix: one of these words (or a flag's bounds, "must be ...").
FIX = re.compile(r"must be|Choose|Did you mean|Valid keys|write|fix it|fix that|Save it|keep one|give|remove")


class Raw(str):
    """Text written into the file as it is (a number of thousands of digits, brackets 5,000 deep)."""


def emit(value, yaml_style: bool) -> str:
    """`value` as JSON text (YAML's flow style reads it too); a YAML mapping's keys may be any scalar."""
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return {True: {"nan": ".nan", "inf": ".inf", "-inf": "-.inf"},
                False: {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}}[yaml_style][repr(value)]
    if isinstance(value, list):
        return "[" + ", ".join(emit(v, yaml_style) for v in value) + "]"
    if isinstance(value, dict):
        key = (lambda k: emit(k, True)) if yaml_style else (lambda k: json.dumps(str(k)))
        return "{" + ", ".join(f"{key(k)}: {emit(v, yaml_style)}" for k, v in value.items()) + "}"
    return json.dumps(value)


NAMES = [f.name for f in fields(TrainConfig)]
TEXTS = st.text(max_size=12) | st.sampled_from(["d2l", "speedrun", "lenet", "cpu", "cuda:0", "flip+translate",
                                                "imagefolder:x", "a\0b", "\udcff", "x" * 3000])
SCALARS = (st.none() | st.booleans() | st.integers() | st.integers(-(2**70), 2**70) | st.floats() | TEXTS
           | st.integers(4290, 4400).map(lambda n: Raw("9" * n))
           | st.integers(990, 5000).map(lambda n: Raw("[" * n + "]" * n)))
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.sampled_from(NAMES) | st.text(max_size=5), inner, max_size=3),
                      max_leaves=6)
SETTINGS = st.dictionaries(st.sampled_from(NAMES) | TEXTS, VALUES, max_size=6) \
    | st.dictionaries(st.sampled_from(NAMES), SCALARS, max_size=10)  # more often a file of known keys


@st.composite
def config_files(draw) -> tuple[str, bytes]:
    """(file name, its bytes): JSON or YAML; YAML with an anchor and an alias, or not; now and then a
    document that is no mapping, or bytes that are not UTF-8 spliced in."""
    yaml_style = draw(st.booleans())
    document = draw(SETTINGS) if draw(st.integers(0, 9)) else draw(VALUES)
    text = emit(document, yaml_style)
    if yaml_style and isinstance(document, dict) and document and draw(st.booleans()):
        key = next(iter(document))
        text = text.replace(": ", ": &a ", 1)[:-1] + f", again: *a}}"  # anchor the first value, alias it
        assert key is not None
    data = text.encode("utf-8", "surrogatepass")
    if draw(st.integers(0, 9)) == 0:
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.binary(min_size=1, max_size=3)) + data[at:]
    return ("c.yaml" if yaml_style else "c.json"), data


def check_outcome(config_file: Path) -> None:
    """A TrainConfig, or one short UserError saying what to fix: never another exception."""
    try:
        config = resolve_config(None, read_config_file(config_file), {})
    except UserError as exc:
        message = str(exc)
        assert len(message) < 2000 and "\n" not in message, message[:3000]
        assert FIX.search(message), message
    else:
        assert isinstance(config, TrainConfig)


@FUZZ
@given(config_files())
def test_any_config_file_is_a_config_or_one_short_user_error(tmp_path, case):
    name, data = case
    (tmp_path / name).write_bytes(data)
    check_outcome(tmp_path / name)


@settings(FUZZ, max_examples=12, deadline=None)  # bounded by the reader's fuzz above
@given(config_files())
def test_train_with_any_config_file_exits_0_or_2_in_a_line_and_makes_no_folder(tmp_path, capsys, case):
    """Through the CLI, in process: the data is an empty folder, so a config train accepts still stops,
    with exit 2, before a run folder exists."""
    name, data = case
    (tmp_path / name).write_bytes(data)
    (tmp_path / "empty").mkdir(exist_ok=True)
    out = tmp_path / "run"
    capsys.readouterr()
    code = main(["train", "--config", str(tmp_path / name), "--data", f"imagefolder:{tmp_path / 'empty'}",
                 "--device", "cpu", "--out", str(out), "--no-report"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("alexnet-lab train: error: ") and "Traceback" not in err
    assert len(err) < 2000 and not out.exists()
