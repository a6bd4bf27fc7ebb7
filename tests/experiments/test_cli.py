"""The o2o CLI: known failures end with one clear line and exit code 2, not a traceback."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from experiments.cli import app

runner = CliRunner()


def test_help_lists_every_stage() -> None:
    out = runner.invoke(app, ["--help"]).output
    for cmd in ("generate", "prep", "train", "export", "score", "serve", "report", "demo"):
        assert cmd in out


def test_prep_without_raw_files(tmp_path: Path) -> None:
    r = runner.invoke(app, ["prep", "--raw", str(tmp_path)])
    assert r.exit_code == 2 and "missing raw file" in r.output and "Traceback" not in r.output


def test_train_without_features_leaves_no_run(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    r = runner.invoke(
        app, ["train", "recommender", "--features", str(tmp_path / "nope"), "--runs-dir", str(runs)]
    )
    assert r.exit_code == 2 and "o2o prep" in r.output
    assert not runs.exists() or not any(runs.iterdir())


def test_train_rejects_unknown_override(tmp_path: Path) -> None:
    r = runner.invoke(app, ["train", "intent", "--set", "train.learning_rate=1"])
    assert r.exit_code == 2 and "learning_rate" in r.output


def test_score_and_serve_refuse_a_folder_that_is_not_a_bundle(tmp_path: Path) -> None:
    for cmd in (["score", "--artifact", str(tmp_path)], ["serve", "--artifact", str(tmp_path)]):
        r = runner.invoke(app, cmd)
        assert r.exit_code == 2 and "error" in r.output, r.output


def test_export_of_unfinished_run(tmp_path: Path) -> None:
    r = runner.invoke(app, ["export", "--run", str(tmp_path), "--out", str(tmp_path / "a")])
    assert r.exit_code == 2 and "finished training run" in r.output
