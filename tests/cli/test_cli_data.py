from __future__ import annotations

import json

from typer.testing import CliRunner

from forgeflow.cli.data import app
from forgeflow.data.sample import PREFERENCE_SAMPLE_PATH

runner = CliRunner()


def test_help_lists_commands_and_options():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "prepare" in result.output and "validate" in result.output
    prep = runner.invoke(app, ["prepare", "--help"], terminal_width=200)
    for flag in ("--dataset", "--config", "--split", "--test-size", "--seed", "--out", "--json"):
        assert flag in prep.output
    val = runner.invoke(app, ["validate", "--help"], terminal_width=200)
    assert "--model" in val.output and "--json" in val.output and "--method" in val.output


def test_prepare_sample_json(tmp_path):
    result = runner.invoke(app, ["prepare", "--dataset", "sample", "--out", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["source"] == "sample"
    assert data["train_rows"] + data["test_rows"] == data["total_rows"]
    assert (tmp_path / "train_data.jsonl").exists() and (tmp_path / "test_data.jsonl").exists()


def test_prepare_table_and_slice(tmp_path):
    result = runner.invoke(
        app, ["prepare", "-d", "sample", "-o", str(tmp_path), "--split", "train_sft[:20]", "--test-size", "5"]
    )
    assert result.exit_code == 0, result.output
    assert "train" in result.stdout and "15" in result.stdout and "20" in result.stdout


def test_prepare_errors_are_one_red_line(tmp_path):
    result = runner.invoke(app, ["prepare", "-d", str(tmp_path / "missing.jsonl"), "-o", str(tmp_path)])
    assert result.exit_code == 1
    assert "missing.jsonl" in result.stderr and result.stdout == ""
    bad = runner.invoke(app, ["prepare", "-d", "sample", "-o", str(tmp_path), "--test-size", "1.5"])
    assert bad.exit_code == 1 and "--test-size" in bad.stderr
    word = runner.invoke(app, ["prepare", "-d", "sample", "-o", str(tmp_path), "--test-size", "lots"])
    assert word.exit_code == 1 and "not a number" in word.stderr


def test_validate_good_file(tmp_path):
    runner.invoke(app, ["prepare", "-d", "sample", "-o", str(tmp_path)])
    result = runner.invoke(app, ["validate", str(tmp_path / "train_data.jsonl")])
    assert result.exit_code == 0, result.output
    assert "rows" in result.stdout and "OK" in result.stdout
    as_json = runner.invoke(app, ["validate", str(tmp_path / "test_data.jsonl"), "--json"])
    data = json.loads(as_json.stdout)
    assert data["ok"] and data["problems"] == [] and data["length_unit"] == "chars"


def test_validate_bad_file_lists_every_problem(tmp_path):
    path = tmp_path / "bad.jsonl"
    good = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    path.write_text(
        "\n".join(
            [json.dumps(good), "{oops", json.dumps(good), json.dumps({"messages": [{"role": "bot", "content": "x"}]})]
        )
        + "\n",
        encoding="utf-8",
    )
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 1
    assert "line 2: not valid JSON" in result.stdout
    assert "line 4: messages[0].role 'bot' is not one of system, user, assistant" in result.stdout
    assert "line 4: no assistant message" in result.stdout
    assert "2 bad row(s) of 4" in result.stderr
    as_json = runner.invoke(app, ["validate", str(path), "--json"])
    assert as_json.exit_code == 1
    assert len(json.loads(as_json.stdout)["problems"]) == 3


def test_validate_with_model_reports_tokens(tmp_path, tiny_model_dir):
    runner.invoke(app, ["prepare", "-d", "sample", "-o", str(tmp_path)])
    args = ["validate", str(tmp_path / "test_data.jsonl"), "--model", str(tiny_model_dir), "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["length_unit"] == "tokens" and data["lengths"]["max"] >= data["lengths"]["min"] > 0


def test_validate_errors(tmp_path):
    missing = runner.invoke(app, ["validate", str(tmp_path / "none.jsonl")])
    assert missing.exit_code == 1 and "none.jsonl" in missing.stderr
    (tmp_path / "ok.jsonl").write_text("{}\n", encoding="utf-8")
    no_model = runner.invoke(app, ["validate", str(tmp_path / "ok.jsonl"), "--model", "org/not-a-folder"])
    assert no_model.exit_code == 1 and "not a local model folder" in no_model.stderr


PAIR = {"prompt": "Who founded Quillfeather?", "chosen": "Ysolde Marrowick.", "rejected": "I don't know."}
CHAT = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}


def test_validate_preference_rows_with_method_dpo(tmp_path, tiny_model_dir):
    ok = runner.invoke(app, ["validate", str(PREFERENCE_SAMPLE_PATH), "--method", "dpo"], terminal_width=200)
    assert ok.exit_code == 0, ok.output
    assert "OK (dpo)" in " ".join(ok.stdout.split()) and "preference pairs" in ok.stdout
    tokens = runner.invoke(app, ["validate", str(PREFERENCE_SAMPLE_PATH), "--method", "dpo", "--model",
                                 str(tiny_model_dir), "--json"])
    data = json.loads(tokens.stdout)
    assert tokens.exit_code == 0 and data["method"] == "dpo" and data["ok"] and data["rows"] >= 40
    assert data["length_unit"] == "tokens" and data["lengths"]["min"] > 0

    bad = tmp_path / "prefs.jsonl"
    bad.write_text("\n".join(json.dumps(r) for r in [PAIR, {"prompt": "q", "chosen": "a"}, CHAT,
                                                        PAIR | {"rejected": PAIR["chosen"]}]) + "\n")
    result = runner.invoke(app, ["validate", str(bad), "--method", "dpo"], terminal_width=300)
    assert result.exit_code == 1
    assert f"{bad}: line 2: missing 'rejected'" in result.stdout
    assert f"{bad}: line 3: this is a chat row ('messages')" in result.stdout
    assert f"{bad}: line 4: 'chosen' and 'rejected' are the same answer" in result.stdout
    assert "3 bad row(s) of 4" in result.stderr and "every row is" not in result.stderr  # some rows are preferences


def test_validate_says_which_method_fits_when_every_row_has_the_other_shape(tmp_path):
    """sft stays the default and nothing is guessed: a preference file fails as chat data, with one hint naming the
    method whose shape every row has (and the same the other way round)."""
    as_chat = runner.invoke(app, ["validate", str(PREFERENCE_SAMPLE_PATH)], terminal_width=300)
    assert as_chat.exit_code == 1
    assert "line 1: missing 'messages': this is a preference row" in as_chat.stdout
    assert "every row is a preference row (prompt, chosen, rejected), which method dpo trains on: validate it with " \
           "--method dpo" in " ".join(as_chat.stderr.split())
    data = json.loads(runner.invoke(app, ["validate", str(PREFERENCE_SAMPLE_PATH), "--json"]).stdout)
    assert data["method"] == "sft" and data["fits_method"] == "dpo" and not data["ok"]

    chat = tmp_path / "chat.jsonl"
    chat.write_text(json.dumps(CHAT) + "\n" + json.dumps(CHAT) + "\n")
    as_pairs = runner.invoke(app, ["validate", str(chat), "--method", "dpo", "--json"])
    assert as_pairs.exit_code == 1 and json.loads(as_pairs.stdout)["fits_method"] == "sft"
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text(json.dumps(CHAT) + "\n" + "{oops\n" + json.dumps(PAIR) + "\n")
    assert json.loads(runner.invoke(app, ["validate", str(mixed), "--json"]).stdout)["fits_method"] is None

    unknown = runner.invoke(app, ["validate", str(chat), "--method", "ppo"])
    assert unknown.exit_code == 1 and "--method 'ppo' is not one of sft, dpo" in unknown.stderr
