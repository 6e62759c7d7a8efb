"""result.json records and the report command: fields, weights hash, reading files / folders, md and csv."""

import csv
import hashlib
import io
import json

import pytest
import torch
from typer.testing import CliRunner

from vicregl_cli.backbones import build_backbone, resolve_weights, save_backbone
from vicregl_cli.cli import app
from vicregl_cli.errors import UserError
from vicregl_cli.files import write_json_atomic
from vicregl_cli.report import make_result, read_results, to_csv, to_markdown
from vicregl_cli.training_stats import stats_rows


def _record(run, lr, top1):
    metrics = {"top1": top1, "top5": top1 + 10}
    weights = resolve_weights("random", "resnet18")
    record = make_result("linear", weights, "/data/in1k", {"lr": lr, "epochs": 100}, metrics, 12.5)
    return {"run": run, **record}


def write_result(run_dir, record):
    return write_json_atomic(run_dir / "result.json", record)


def test_make_result_names_every_field_and_hashes_the_weights(tmp_path):
    weights = tmp_path / "backbone.pth"
    save_backbone(weights, "resnet18", build_backbone("resnet18").state_dict())
    record = make_result(
        "knn", resolve_weights(weights), "/data", {"ks": [20, 200], "root": tmp_path}, {"top1@20": 1}, 3
    )
    assert record["backbone"] == "resnet18"
    assert set(record) == {
        "protocol",
        "backbone",
        "weights",
        "dataset",
        "params",
        "metrics",
        "wall_time_s",
        "versions",
    }
    assert record["weights"] == {
        "path": str(weights.resolve()),
        "sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
        "seed": None,
    }
    assert record["params"] == {"ks": [20, 200], "root": str(tmp_path)}
    assert record["versions"]["torch"] == torch.__version__ and "vicregl" in record["versions"]
    path = write_result(tmp_path / "run", record)
    assert json.loads(path.read_text()) == record
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["result.json"]  # no temporary left behind


def test_read_results_from_files_summaries_and_folders(tmp_path):
    records = [_record("lr=1", 1.0, 60.0), _record("lr=0.1", 0.1, 70.0)]
    for record in records:
        write_result(tmp_path / "sweep" / record["run"], record)
    write_json_atomic(tmp_path / "sweep" / "summary.json", {"best": "lr=0.1", "runs": records})
    assert read_results([tmp_path / "sweep"]) == sorted(records, key=lambda r: "sweep/" + r["run"])
    assert read_results([tmp_path / "sweep" / "summary.json"]) == records
    assert read_results([tmp_path / "sweep" / "lr=1" / "result.json"]) == records[:1]
    with pytest.raises(UserError, match="does not exist"):
        read_results([tmp_path / "missing"])
    (tmp_path / "bad.json").write_text('{"run": "a", "protocol": "x"}')
    with pytest.raises(UserError, match="missing backbone"):
        read_results([tmp_path / "bad.json"])


def test_markdown_and_csv_mark_the_best_row():
    records = [_record("lr=1", 1.0, 60.0), _record("lr=0.1", 0.1, 70.25), _record("lr=0.01", 0.01, 65.0)]
    markdown = to_markdown(records, "top1").splitlines()
    assert markdown[0] == "linear · resnet18 · random(seed=0) · /data/in1k"
    assert markdown[2] == "| run | lr | top1 | top5 | wall_time_s |"
    assert markdown[5] == "| **lr=0.1** | **0.1** | **70.25** | **80.25** | **12.5** |"
    rows = list(csv.DictReader(io.StringIO(to_csv(records, "top1"))))
    assert [row["best"] for row in rows] == ["0", "1", "0"]
    assert float(rows[1]["top1"]) == 70.25 and rows[1]["lr"] == "0.1" and rows[1]["weights"] == "random"


def test_report_command_prints_table_md_and_csv(tmp_path):
    records = [_record("lr=1", 1.0, 60.0), _record("lr=0.1", 0.1, 70.0)]
    for record in records:
        write_result(tmp_path / record["run"], record)
    runner = CliRunner()
    table = runner.invoke(app, ["report", str(tmp_path)], terminal_width=200)
    assert table.exit_code == 0, table.output
    best_line = next(line for line in table.output.splitlines() if "★" in line and "lr=" in line)
    assert "lr=0.1" in best_line and "70.00" in best_line
    markdown = runner.invoke(app, ["report", str(tmp_path), "--format", "md"])
    assert "| **lr=0.1** |" in markdown.output
    runner.invoke(app, ["report", str(tmp_path), "--format", "csv", "--output", str(tmp_path / "table.csv")])
    assert (tmp_path / "table.csv").read_text().startswith("run,protocol,backbone,weights,dataset,")
    bad = runner.invoke(app, ["report", str(tmp_path), "--format", "xlsx"])
    assert bad.exit_code != 0


def _cells(line):
    """The words of a rich table row, without the column rules."""
    return [word for word in line.split() if word != "│"]


def _knn_record(run, temperature, top1):
    weights = resolve_weights("random", "resnet18")
    metrics = {"top1@20": top1, "top5@20": top1 + 5}
    params = {"temperature": temperature}
    return {"run": run, **make_result("knn", weights, "/data/in1k", params, metrics, 3.0)}


def test_several_protocols_get_a_table_each_ranked_by_their_own_metric(tmp_path):
    linear = [_record("lr=1", 1.0, 60.0), _record("lr=0.1", 0.1, 70.0)]
    knn = [_knn_record("T=0.07", 0.07, 55.0), _knn_record("T=0.1", 0.1, 50.0)]
    markdown = to_markdown(linear + knn, "top1").splitlines()
    headers = [line for line in markdown if line.startswith("| run |")]
    assert headers == [
        "| run | lr | top1 | top5 | wall_time_s |", "| run | temperature | top1@20 | top5@20 | wall_time_s |"
    ]
    best = [line.split(" | ")[0] for line in markdown if line.startswith("| **")]
    assert best == ["| **lr=0.1**", "| **T=0.07**"]
    rows = list(csv.DictReader(io.StringIO(to_csv(linear + knn, None))))
    flags = [(row["run"], row["best"]) for row in rows]
    assert flags == [("lr=1", "0"), ("lr=0.1", "1"), ("T=0.07", "1"), ("T=0.1", "0")]  # a best per protocol
    for record in linear + knn:
        write_result(tmp_path / record["protocol"] / record["run"], record)
    table = CliRunner().invoke(app, ["report", str(tmp_path)], terminal_width=200)
    assert table.exit_code == 0, table.output
    assert "results: knn" in table.output and "results: linear" in table.output
    best = [_cells(line)[:3] for line in table.output.splitlines() if "★" in line and "=" in line]
    assert best == [["★", "T=0.07", "0.07"], ["★", "lr=0.1", "0.1"]]


def _stats_file(folder, lines, torn=""):
    folder.mkdir(parents=True)
    path = folder / "stats.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines) + torn)
    return path


def test_report_of_stats_jsonl_shows_each_runs_last_logged_values(tmp_path):
    lines = [{"epoch": 0, "step": 1, "loss": 3.5}, {"epoch": 0, "step": 2, "loss": 3.25, "knn_top1@20": 12.5},
             {"epoch": 1, "step": 3, "loss": 3.0}]  # fmt: skip
    first = _stats_file(tmp_path / "a", lines, torn='{"epoch": 1, "st')  # a run still writing
    second = _stats_file(tmp_path / "b", [{"epoch": 0, "step": 1, "loss": 4.0}])
    assert stats_rows({"a": first, "b": second}) == (
        ["last logged", "a", "b"],
        [["epoch", "1", "0"], ["step", "3", "1"], ["loss", "3", "4"], ["knn_top1@20", "12.5", "-"]],
    )
    runner = CliRunner()
    table = runner.invoke(app, ["report", str(first)], terminal_width=200)
    assert table.exit_code == 0, table.output
    assert table.output.split()[0] == "stats.jsonl"  # the title
    shown = [_cells(line) for line in table.output.splitlines() if "knn_top1@20" in line]
    assert shown == [["knn_top1@20", "12.5"]]
    markdown = runner.invoke(app, ["report", str(tmp_path), "--format", "md"])
    assert markdown.exit_code == 0, markdown.output
    assert "| last logged | a | b |" in markdown.output and "| knn_top1@20 | 12.5 | - |" in markdown.output
