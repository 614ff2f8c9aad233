"""The preprocess pipeline end to end on our fixtures: accounting, outputs, determinism, the CLI."""

from __future__ import annotations

import datetime
import json
import random
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

from qwentune.cli import main
from qwentune.config.preprocess import PreprocessConfig
from qwentune.data.preprocess import OUTPUT_FILES, run_preprocess

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures" / "data"
GOOD_FIXTURES = sorted(p for p in FIXTURES.iterdir() if p.is_file())
SPLIT_FILES = ("train.jsonl", "validation.jsonl", "test.jsonl", "chinese_test.jsonl")


@pytest.fixture(scope="module")
def tokenizer_available():
    from qwentune.data.tokenize import DEFAULT_TOKENIZER, load_tokenizer

    try:
        load_tokenizer(DEFAULT_TOKENIZER)
    except Exception as exc:
        pytest.skip(f"the embedded Qwen tokenizer is not available: {exc}")


def copy_fixtures(target: Path) -> Path:
    target.mkdir(parents=True, exist_ok=True)
    for path in GOOD_FIXTURES:
        shutil.copy(path, target / path.name)
    return target


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def assert_adds_up(stats: dict) -> None:
    for name, entry in stats["sources"].items():
        assert entry["in"] == entry["train"] + entry["validation"] + entry["test"] + entry["rejected"], name
        assert entry["rejected"] == sum(entry["reasons"].values()), name
    totals = stats["totals"]
    assert totals["in"] == totals["kept"] + totals["rejected"]
    assert totals["kept"] == totals["train"] + totals["validation"] + totals["test"]
    assert stats["outputs"]["rejects.jsonl"] == totals["rejected"]


@pytest.fixture(scope="module")
def fixture_run(tmp_path_factory, tokenizer_available):
    root = tmp_path_factory.mktemp("fixture_run")
    config = PreprocessConfig(input_dir=copy_fixtures(root / "raw"), output_dir=root / "processed", num_workers=0)
    return run_preprocess(config), root / "processed"


EXPECTED_REASONS = {
    "alpaca": {
        "duplicate": 1,
        "empty_output": 1,
        "missing_field": 1,
        "placeholder_output": 2,
        "unfilled_template": 1,
        "wrong_type": 1,
    },
    "belle_conversations": {},
    "belle_instruction": {},
    "belle_multiturn": {"bad_dialogue": 1},
    "canonical": {"invalid_split": 1},
    "encoding": {"broken_encoding": 3, "control_characters": 1},
    "firefly": {"missing_field": 1},
    "firefly_concatenated": {},
    "openai": {"invalid_json": 1, "misplaced_system": 1, "no_user_turn": 1, "not_an_object": 1},
    "sharegpt": {"empty_output": 1, "not_ending_with_assistant": 1, "unknown_role": 1},
    "sharegpt_single_object": {},
}


def test_fixture_folder_accounting(fixture_run):
    report, _ = fixture_run
    stats = report.stats
    assert report.exit_code == 0, report.problems
    assert_adds_up(stats)
    for name, reasons in EXPECTED_REASONS.items():
        assert stats["sources"][name]["reasons"] == reasons, name
    # The same boiling-water thread comes from three OASST files: kept once, two duplicates.
    oasst = [stats["sources"][name] for name in ("oasst_flat", "oasst_nested", "oasst_trees")]
    assert sum(entry["kept"] for entry in oasst) == 1
    combined = sum((Counter(entry["reasons"]) for entry in oasst), Counter())
    assert combined == {"duplicate": 2, "not_ending_with_assistant": 3, "deleted": 2, "orphan_message": 1}
    assert stats["sources"]["oasst_flat"]["read"] == 12 and stats["sources"]["oasst_flat"]["in"] == 4
    assert {f["file"]: f["format"] for f in stats["files"]}["belle_multiturn.jsonl"] == "belle"
    assert stats["totals"]["in"] == 51 and stats["totals"]["kept"] == 22
    assert stats["tokens"]["counted"] > 0 and stats["tokens"]["min"] >= 10


def test_output_files(fixture_run):
    report, out = fixture_run
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUT_FILES)
    stats = json.loads((out / "stats.json").read_text(encoding="utf-8"))
    assert stats["totals"] == report.stats["totals"]
    for name in SPLIT_FILES:
        assert len(lines(out / name)) == stats["outputs"][name]
    test = lines(out / "test.jsonl")
    assert lines(out / "chinese_test.jsonl") == [r for r in test if r["lang"] == "zh"]
    assert any(r["id"] == "demo-1" for r in test)  # pinned split
    for record in lines(out / "train.jsonl"):
        assert [key for key in record if key != "tools"] == ["id", "source", "lang", "messages", "meta"]
        assert record["messages"][-1]["role"] == "assistant"
        assert all(m["content"] == m["content"].strip() for m in record["messages"])


def test_rejects_carry_file_line_reason_and_original(fixture_run):
    _, out = fixture_run
    rejects = lines(out / "rejects.jsonl")
    assert all(set(r) == {"file", "line", "source", "reason", "detail", "original"} for r in rejects)
    by_reason = {(r["file"], r["reason"]): r for r in rejects}
    placeholder = [r for r in rejects if r["reason"] == "placeholder_output"]
    assert [r["line"] for r in placeholder] == [19, 24]
    assert placeholder[0]["original"]["output"].startswith("<nooutput>")
    assert by_reason[("openai.jsonl", "invalid_json")]["line"] == 4
    assert by_reason[("openai.jsonl", "invalid_json")]["original"].startswith('{"messages"')
    assert by_reason[("oasst_flat.jsonl", "orphan_message")]["original"]["message_id"] == "z9"


def test_example_is_printed_with_its_mask(fixture_run, tmp_path, capsys):
    config = PreprocessConfig(input_dir=copy_fixtures(tmp_path / "raw"), validate_only=True, num_workers=0)
    run_preprocess(config)
    printed = capsys.readouterr().out
    assert "trained spans in ⟦ ⟧" in printed and "<|im_end|>⟧" in printed
    assert "Preprocessing: records by dataset" in printed and "Rejected, by reason" in printed


@pytest.mark.parametrize("path", GOOD_FIXTURES, ids=lambda p: p.name)
def test_every_fixture_file_adds_up_on_its_own(path, tmp_path):
    config = PreprocessConfig(
        input_dir=tmp_path / "none",
        output_dir=tmp_path / "out",
        datasets={"one": {"path": path}},
        show_example=False,
        cleaning={"too_short": False, "too_long": False},
    )
    stats = run_preprocess(config).stats
    assert_adds_up(stats)
    assert stats["sources"]["one"]["read"] >= stats["sources"]["one"]["in"] > 0


def shuffle_inputs(folder: Path) -> None:
    """Reverse the record order of every file (JSON arrays and JSON lines)."""
    for path in folder.iterdir():
        text = path.read_text(encoding="utf-8")
        if text.lstrip().startswith("["):
            path.write_text(json.dumps(json.loads(text)[::-1], ensure_ascii=False), encoding="utf-8")
        elif path.suffix == ".jsonl":
            path.write_text("\n".join(text.splitlines()[::-1]) + "\n", encoding="utf-8")


def test_outputs_are_byte_identical_across_runs_and_input_order(tmp_path, tokenizer_available):
    raw = copy_fixtures(tmp_path / "raw")

    def outputs():
        config = PreprocessConfig(input_dir=raw, output_dir=tmp_path / "out", num_workers=0, show_example=False)
        run_preprocess(config)
        return {name: (tmp_path / "out" / name).read_bytes() for name in (*SPLIT_FILES, "stats.json")}

    first = outputs()
    assert outputs() == first
    shuffle_inputs(raw)
    assert outputs() == first


def test_worker_processes_give_the_same_output(tmp_path, tokenizer_available):
    raw = copy_fixtures(tmp_path / "raw")
    results = []
    for workers in (0, 1):
        out = tmp_path / f"out{workers}"
        run_preprocess(
            PreprocessConfig(input_dir=raw, output_dir=out, num_workers=workers, batch_size=4, show_example=False)
        )
        results.append({name: (out / name).read_bytes() for name in (*SPLIT_FILES, "rejects.jsonl")})
    assert results[0] == results[1]


def test_validate_only_writes_nothing_and_sets_the_exit_code(tmp_path, tokenizer_available):
    good = copy_fixtures(tmp_path / "good")
    out = tmp_path / "out"
    args = ["preprocess", "--input_dir", str(good), "--output_dir", str(out), "--validate_only", "--num_workers", "0"]
    assert main(args) == 0
    assert not out.exists()
    broken = tmp_path / "broken"
    shutil.copytree(FIXTURES / "broken", broken)
    shutil.copy(FIXTURES / "alpaca.json", broken / "alpaca.json")
    report = run_preprocess(
        PreprocessConfig(input_dir=broken, output_dir=out, validate_only=True, num_workers=0, show_example=False)
    )
    assert report.exit_code == 1 and report.written == [] and not out.exists()
    errors = {p.file: p.message for p in report.errors}
    assert "not JSON" in errors["not_json.json"]
    assert "format not detected" in errors["unknown_format.json"]
    assert "the rest of the file was not read" in errors["truncated.json"]
    assert_adds_up(report.stats)
    assert report.stats["sources"]["truncated"]["reasons"] == {"invalid_json": 1}
    assert report.stats["sources"]["unknown_format"]["reasons"] == {"unknown_format": 1}
    assert main(["preprocess", "--input_dir", str(tmp_path / "missing"), "--validate_only"]) == 1


def test_a_run_with_no_input_files_leaves_earlier_outputs_alone(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "train.jsonl").write_text("earlier\n")
    assert main(["preprocess", "--input_dir", str(tmp_path / "missing"), "--output_dir", str(out)]) == 1
    assert sorted(path.name for path in out.iterdir()) == ["train.jsonl"]
    assert (out / "train.jsonl").read_text() == "earlier\n"
    printed = capsys.readouterr().out
    assert f"input folder not found: {tmp_path / 'missing'}" in printed and "nothing written" in printed


def test_cli_flags_and_config_errors(tmp_path, capsys, tokenizer_available):
    raw = copy_fixtures(tmp_path / "raw")
    out = tmp_path / "out"
    code = main(
        [
            "preprocess",
            "--input_dir",
            str(raw),
            "--output_dir",
            str(out),
            "--max_length",
            "60",
            "--min_length",
            "25",
            "--train_ratio",
            "0.5",
            "--val_ratio",
            "0.25",
            "--test_ratio",
            "0.25",
            "--seed",
            "7",
            "--num_workers",
            "0",
            "--max_samples",
            "4",
        ]
    )
    assert code == 0
    stats = json.loads((out / "stats.json").read_text(encoding="utf-8"))
    assert stats["config"]["ratios"] == {"train": 0.5, "validation": 0.25, "test": 0.25}
    assert stats["config"]["seed"] == 7 and stats["config"]["max_samples"] == 4
    assert all(entry["read"] <= 4 for entry in stats["sources"].values())
    assert stats["reasons"]["too_short"] > 0 and stats["reasons"]["too_long"] > 0
    assert_adds_up(stats)
    capsys.readouterr()
    assert main(["preprocess", "--input_dir", str(raw), "--train_ratio", "0.8"]) == 2
    assert "must add up to 1" in capsys.readouterr().err
    assert main(["preprocess", "--input_dir", str(raw), "--set", "cleaning.typo=false"]) == 2
    assert "unknown key 'cleaning.typo'" in capsys.readouterr().err


def test_config_file_formats_caps_weights_and_switches(tmp_path):
    raw = copy_fixtures(tmp_path / "raw")
    config_file = tmp_path / "preprocess.yaml"
    config_file.write_text(
        yaml.safe_dump(
            {
                "input_dir": str(raw),
                "output_dir": str(tmp_path / "out"),
                "show_example": False,
                "datasets": {
                    "belle_instruction": {"format": "belle"},
                    "sharegpt": {"weight": 3},
                    "openai": {"max_records": 1},
                },
                "cleaning": {"placeholder_output": False, "too_short": False, "too_long": False},
                "template_values": {"name": "Qwentune", "author": "the qwentune authors"},
                "ratios": {"train": 1.0, "validation": 0.0, "test": 0.0},
            }
        ),
        encoding="utf-8",
    )
    assert main(["preprocess", "--config", str(config_file)]) == 0
    stats = json.loads((tmp_path / "out" / "stats.json").read_text(encoding="utf-8"))
    assert_adds_up(stats)
    files = {f["file"]: f for f in stats["files"]}
    assert (
        files["belle_instruction.jsonl"]["format"] == "belle"
        and files["belle_instruction.jsonl"]["format_from"] == "config"
    )
    assert "placeholder_output" not in stats["sources"]["alpaca"]["reasons"]
    assert "unfilled_template" not in stats["sources"]["alpaca"]["reasons"]
    assert stats["sources"]["openai"]["reasons"]["over_cap"] == 1
    sharegpt = stats["sources"]["sharegpt"]
    assert sharegpt["extra_train_copies"] == 2 * sharegpt["train"]
    train = lines(tmp_path / "out" / "train.jsonl")
    assert len(train) == stats["outputs"]["train.jsonl"] == stats["totals"]["train"] + 2 * sharegpt["train"]
    assert any(
        "I am Qwentune, an AI assistant developed by the qwentune authors." in m["content"]
        for r in train
        for m in r["messages"]
    )
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"datasets": {"x": {"format": "csv"}}, "input_dir": str(raw)}), encoding="utf-8")
    assert main(["preprocess", "--config", str(bad)]) == 2


def test_compressed_inputs_manifest_and_output_inside_input(tmp_path):
    import gzip

    import pyarrow as pa
    import pyarrow.parquet as pq

    raw = tmp_path / "raw"
    (raw / "chats").mkdir(parents=True)
    (raw / "chats" / "part1.jsonl.gz").write_bytes(gzip.compress((FIXTURES / "sharegpt.json").read_bytes()))
    rows = lines(FIXTURES / "firefly.jsonl")
    for row in rows:  # a value JSON has no type for travels into rejects.jsonl as text
        row["created"] = datetime.datetime(2024, 5, 1, tzinfo=datetime.timezone.utc)
    pq.write_table(pa.Table.from_pylist(rows), raw / "firefly.parquet")
    (raw / "chats" / "source.json").write_text(json.dumps({"format": "sharegpt", "commit": "abc"}), encoding="utf-8")
    config = PreprocessConfig(
        input_dir=raw,
        output_dir=raw / "processed",
        show_example=False,
        cleaning={"too_short": False, "too_long": False},
    )
    first = run_preprocess(config).stats
    assert {f["file"]: (f["source"], f["format"], f["format_from"]) for f in first["files"]} == {
        "chats/part1.jsonl.gz": ("chats", "sharegpt", "manifest"),
        "firefly.parquet": ("firefly", "firefly", "detected"),
    }
    assert first["sources"]["firefly"]["kept"] == 2
    [reject] = [r for r in lines(raw / "processed" / "rejects.jsonl") if r["file"] == "firefly.parquet"]
    assert reject["original"]["created"].startswith("2024-05-01")
    second = run_preprocess(config).stats  # processed/ now holds JSONL files: they are not inputs
    assert second["totals"] == first["totals"]


def test_door_script_from_the_repo_root():
    result = subprocess.run(
        [sys.executable, "data/preprocess.py", "--help"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    for flag in (
        "--input_dir",
        "--output_dir",
        "--tokenizer",
        "--max_length",
        "--min_length",
        "--train_ratio",
        "--val_ratio",
        "--test_ratio",
        "--validate_only",
        "--config",
        "--seed",
        "--num_workers",
        "--max_samples",
    ):
        assert flag in result.stdout


def test_a_file_that_breaks_off_keeps_what_was_read(tmp_path):
    import gzip

    raw = tmp_path / "raw"
    raw.mkdir()
    # Flat OASST rows, cut inside the gzip stream: the rows read before the break are still rebuilt.
    rng = random.Random(0)
    rows = []
    for tree in range(3000):
        text = "".join(rng.choice("abcdefghij klmnop") for _ in range(300))
        rows.append({"message_id": f"q{tree}", "parent_id": None, "role": "prompter", "text": f"Question {text}?"})
        rows.append({"message_id": f"a{tree}", "parent_id": f"q{tree}", "role": "assistant", "text": text, "rank": 0})
    data = gzip.compress("".join(json.dumps(row) + "\n" for row in rows).encode())
    (raw / "oasst.jsonl.gz").write_bytes(data[: len(data) * 3 // 4])
    report = run_preprocess(
        PreprocessConfig(
            input_dir=raw,
            output_dir=tmp_path / "out",
            show_example=False,
            cleaning={"too_short": False, "too_long": False},
        )
    )
    assert report.exit_code == 1
    assert any("cannot read the file after" in p.message for p in report.errors)
    entry = report.stats["sources"]["oasst"]
    assert 1000 < entry["read"] < 6000 and entry["in"] > 500
    assert_adds_up(report.stats)
    assert not (tmp_path / "out").exists()  # a run with an error publishes nothing (tests/test_data_outputs.py)
