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
