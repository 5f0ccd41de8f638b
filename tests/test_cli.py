"""The command line is a face: the parser and handlers live in bmteach.cli, the library neither prints nor parses,
--help stays torch-free, and only a person's mistakes become one-sentence errors (bugs keep their traceback)."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from bmteach import cli
from bmteach.errors import UserError

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "bmteach"
FACES = {"cli.py", "__main__.py"}  # the only modules allowed to print or use argparse


def test_help_works_without_importing_torch():
    done = subprocess.run([sys.executable, "-m", "bmteach", "--help"], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0
    for command in ("index", "metrics", "synth", "train", "evaluate", "evaluate-external", "predict"):
        assert command in done.stdout
    probe = ("import sys; from bmteach import cli; cli.build_parser(); "
             "print(sorted(m for m in ('torch', 'torchvision', 'pandas', 'numpy') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_help_lists_the_registered_models():
    from bmteach.models import MODELS

    assert cli.MODEL_CHOICES == tuple(MODELS)


def test_help_lists_the_augmentation_placements_train_accepts():
    from bmteach.train import AUGMENT_ON

    assert cli.AUGMENT_CHOICES == AUGMENT_ON


def test_unset_training_options_come_from_the_model_registry(tmp_path):
    import pandas as pd

    from bmteach.models import MODELS

    manifest = pd.DataFrame({"path": ["a.jpg", "b.jpg"], "label": ["BLA", "LYT"], "fold": [0, 1]})
    for name, spec in MODELS.items():
        args = cli.build_parser().parse_args(["train", "--data", "d", "--out", "o", "--model", name])
        cfg = cli.config_from_args(args, tmp_path, manifest)
        assert (cfg.model, cfg.image_size, cfg.batch_size, cfg.lr) == (name, spec.image_size, spec.batch_size, spec.lr)
    args = cli.build_parser().parse_args(["train", "--data", "d", "--out", "o", "--model", "resnext50",
                                          "--image-size", "64", "--batch-size", "8", "--lr", "0.01"])
    cfg = cli.config_from_args(args, tmp_path, manifest)
    assert (cfg.image_size, cfg.batch_size, cfg.lr) == (64, 8, 0.01)
    assert (MODELS["resnext50"].image_size, MODELS["sequential"].image_size) == (250, 128)


def test_create_model_builds_what_the_registry_names(monkeypatch):
    from bmteach.models import MODELS, ModelSpec, create_model, sequential_cnn

    def tiny(num_classes, pretrained=False):
        return sequential_cnn(num_classes, widths=(4, 4, 4))

    monkeypatch.setitem(MODELS, "tiny", ModelSpec("tiny", tiny, image_size=32, batch_size=8, lr=1e-3))
    assert create_model("tiny", num_classes=3).head.out_features == 3


def test_unknown_model_is_one_sentence_naming_the_choices(tmp_path, capsys):
    assert cli.main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "run"), "--model", "vgg"]) == 2
    err = capsys.readouterr().err
    assert err == "error: Unknown model 'vgg': choose one of sequential, resnext50.\n"
    assert not (tmp_path / "run").exists()


def _metrics_args(tmp_path) -> list[str]:
    csv = tmp_path / "p.csv"
    csv.write_text("true,pred\nBLA,BLA\n")
    return ["metrics", "--predictions", str(csv)]


def test_a_bug_in_a_handler_keeps_its_traceback(tmp_path, monkeypatch):
    def broken(args):
        return 1 / 0

    monkeypatch.setattr(cli, "cli_metrics", broken)
    with pytest.raises(ZeroDivisionError):
        cli.main(_metrics_args(tmp_path))


def test_a_value_error_is_a_bug_too(tmp_path, monkeypatch):
    def broken(args):
        raise ValueError("invalid literal")

    monkeypatch.setattr(cli, "cli_metrics", broken)
    with pytest.raises(ValueError):
        cli.main(_metrics_args(tmp_path))


@pytest.mark.parametrize("exc, message", [
    (UserError("The manifest has no images."), "error: The manifest has no images.\n"),
    (PermissionError(13, "Permission denied", "/data/cells.csv"), "error: Permission denied: /data/cells.csv.\n"),
    (FileNotFoundError(2, "No such file or directory", "/data/gone.csv"), "error: Not found: /data/gone.csv.\n"),
    (NotADirectoryError(20, "Not a directory", "/data/file.txt"), "error: Not a folder: /data/file.txt.\n"),
    (OSError(28, "No space left on device", "/runs/r1/model.pt"),
     "error: Could not read or write /runs/r1/model.pt: No space left on device.\n"),
])
def test_a_persons_mistake_is_one_sentence_and_status_2(tmp_path, monkeypatch, capsys, exc, message):
    def failing(args):
        raise exc

    monkeypatch.setattr(cli, "cli_metrics", failing)
    assert cli.main(_metrics_args(tmp_path)) == 2
    assert capsys.readouterr().err == message


def test_interrupt_is_status_130(tmp_path, monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "cli_metrics", interrupted)
    assert cli.main(_metrics_args(tmp_path)) == 130
    assert capsys.readouterr().err == "interrupted\n"


def test_a_real_missing_file_is_one_sentence(tmp_path, capsys):
    assert cli.main(["metrics", "--predictions", str(tmp_path / "missing.csv")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "missing.csv" in err and err.count("\n") == 1


def _library_modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p.relative_to(PACKAGE).as_posix() not in FACES)


def test_only_the_command_line_prints_or_parses_arguments():
    offenders = []
    for path in _library_modules():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno} print(")
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            if any(name.split(".")[0] == "argparse" for name in names):
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno} import argparse")
    assert _library_modules(), "no library modules found"
    assert offenders == []


def test_no_library_module_defines_a_command_handler():
    handlers = [f"{p.relative_to(REPO)}:{node.name}" for p in _library_modules()
                for node in ast.walk(ast.parse(p.read_text(encoding="utf-8")))
                if isinstance(node, ast.FunctionDef) and node.name.startswith("cli_")]
    assert handlers == []


# --- train composes train -> join -> evaluate ---------------------------------------------------------------

@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    from bmteach.synth import generate_dataset

    base = tmp_path_factory.mktemp("cli-train")
    data = generate_dataset(base / "data", per_class=4, classes=["BLA", "LYT"], seed=3)
    run = base / "run"
    argv = ["train", "--data", str(data), "--out", str(run), "--num-folds", "2", "--epochs", "1",
            "--image-size", "32", "--batch-size", "4", "--device", "cpu", "--workers", "0"]
    assert cli.main(argv) == 0
    return run


def test_train_joins_and_evaluates_when_every_fold_is_done(trained_run):
    from bmteach import runs

    assert (trained_run / runs.OOF).is_file() and (trained_run / runs.METRICS).is_file()


def test_resume_of_a_finished_run_notes_the_complete_folds(trained_run, capsys):
    data = Path(_config(trained_run)["data_root"])
    assert cli.main(["train", "--data", str(data), "--out", str(trained_run), "--resume", "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "note: fold 0: already complete" in err and "note: fold 1: already complete" in err


def test_a_failed_evaluation_after_training_says_how_to_retry(trained_run, monkeypatch, capsys):
    import bmteach.evaluate

    def failing(run_dir, tolerance=None):
        raise UserError("the tolerance file is unreadable")

    monkeypatch.setattr(bmteach.evaluate, "evaluate_run", failing)
    data = Path(_config(trained_run)["data_root"])
    assert cli.main(["train", "--data", str(data), "--out", str(trained_run), "--resume", "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert ("error: training finished but evaluation failed (the tolerance file is unreadable); run "
            f"`python -m bmteach evaluate {trained_run}`.") in err


def _config(run: Path) -> dict:
    from bmteach import runs

    return runs.read_config(run)
