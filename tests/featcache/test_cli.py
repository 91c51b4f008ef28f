"""The `featcache` command family: one behaviour for --version, --json, -q, Ctrl-C and logging
across `featcache <command>` and the stand-alone scripts, which run the same code."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest
from synthetic import make_spec, synthetic

import extractor
from extractor import write_cache
from featcache import cli

REPO = Path(__file__).resolve().parents[2]
VERSION = extractor.__version__

#: The stand-alone scripts: pyproject's name -> (module, main), the same mains featcache runs.
SCRIPTS = {
    "extract": ("extractor.cli", "main"),
    "train-head": ("classifier.cli", "train_main"),
    "evaluate": ("classifier.cli", "evaluate_main"),
    "predict": ("featcache.predict_cli", "main"),
    "serve": ("service.cli", "main"),
}


def synthetic_cache(path: Path, seed: int = 0) -> Path:
    X, y = synthetic(20, 2, seed)
    return write_cache(path, X, y, [f"{i:04d}.png" for i in range(len(y))], make_spec(),
                       class_names=["c0", "c1"])


def test_pyproject_declares_the_command_and_the_package() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    scripts = project["project"]["scripts"]
    assert scripts["featcache"] == "featcache.cli:main"
    for name, (module, main) in SCRIPTS.items():
        assert scripts[name] == f"{module}:{main}"
        assert cli.COMMANDS[name][0] == module and cli.COMMANDS[name][2] == main
    assert "featcache*" in project["tool"]["setuptools"]["packages"]["find"]["include"]
    assert "featcache" in project["tool"]["mypy"]["packages"]
    assert any(d.startswith("argcomplete") for d in project["project"]["dependencies"])


@pytest.mark.parametrize("name", list(cli.COMMANDS))
def test_version_of_every_subcommand_and_script(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main([name, "--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out == f"featcache {name} {VERSION}\n"
    if name in SCRIPTS:
        module, main = SCRIPTS[name]
        with pytest.raises(SystemExit) as info:
            getattr(__import__(module, fromlist=[main]), main)(["--version"])
        assert info.value.code == 0
        assert capsys.readouterr().out == f"{name} {VERSION}\n"


def test_featcache_alone(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out == f"featcache {VERSION}\n"
    with pytest.raises(SystemExit) as info:
        cli.main([])
    assert info.value.code == 2 and "COMMAND" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        cli.main(["--help"])
    out = capsys.readouterr().out
    assert info.value.code == 0
    for name in cli.COMMANDS:
        assert re.search(rf"^\s+{name}\b", out, re.M), name


@pytest.mark.parametrize("name", list(cli.COMMANDS))
def test_subcommands_are_built_from_the_stage_parsers(name: str) -> None:
    """Every flag of a stage's parser is a flag of its subcommand, and nothing else is."""
    builder, _ = cli._stage(name)

    def flags(parser: object) -> set[str]:
        return {s for a in parser._actions for s in a.option_strings}  # type: ignore[attr-defined]

    sub = next(a for a in cli.build_parser()._actions if a.dest == "command")
    assert flags(sub.choices[name]) == flags(builder())  # type: ignore[attr-defined]
    assert {"--version", "-q"} <= flags(builder())
    assert ("--json" in flags(builder())) == (name != "serve")


def test_serve_has_no_json(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["serve", "--head", "h", "--json"])
    assert info.value.code == 2 and "--json" in capsys.readouterr().err


def test_train_head_and_evaluate_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    train, val = synthetic_cache(tmp_path / "t.h5"), synthetic_cache(tmp_path / "v.h5", 1)
    head = tmp_path / "head"
    assert cli.main(["train-head", "--cache", str(train), "--val-cache", str(val),
                     "--out", str(head), "--cv", "3", "--json", "-q"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["head"] == str(head) and summary["kind"] == "logreg"
    assert summary["classes"] == ["c0", "c1"] and summary["features"]
    meta = json.loads((head / "metadata.json").read_text())
    chosen = meta["selection"]["chosen"]
    assert summary["selection"]["folds"] == 3
    assert summary["selection"]["candidates"] == len(meta["selection"]["candidates"]) > 1
    assert summary["selection"]["params"]["C"] == chosen["params"]["C"]
    assert summary["selection"]["cv_accuracy_mean"] == chosen["cv_accuracy_mean"]
    assert summary["validation"]["accuracy"] == meta["metrics"]["validation"]["accuracy"] > 0.8
    assert summary["validation"]["images"] == 40 and summary["train"]["images"] == 40

    assert cli.main(["evaluate", "--head", str(head), "--cache", str(val), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["accuracy"] == summary["validation"]["accuracy"]

    # The plain summary is the same facts in words; -q without --json prints nothing.
    assert cli.main(["train-head", "--cache", str(train), "--out", str(head), "--force",
                     "--cv", "0", "-q"]) == 0
    assert capsys.readouterr().out == ""


def test_errors_are_one_line_naming_the_subcommand(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["train-head", "--cache", str(tmp_path / "missing.h5")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("featcache train-head: error: no such cache file") and \
        err.count("\n") == 1
    assert cli.main(["info", str(tmp_path / "missing.h5")]) == 1
    assert capsys.readouterr().err.startswith("featcache info: error: no such file")
    (tmp_path / "notes.txt").write_text("not a cache")
    assert cli.main(["info", str(tmp_path / "notes.txt"), "--json"]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and "not a readable HDF5 file" in captured.err


def test_info_on_a_cache_with_views(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from synthetic import views_cache

    path = views_cache(tmp_path / "views.h5", n_per_class=5)
    assert cli.main(["info", str(path), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["type"] == "cache" and d["rows"] == 40 and d["images"] == 10
    assert d["views"] == {"per_image": 3, "mode": "dihedral", "seed": 0}
    assert d["classes"] == [{"name": "c0", "images": 5}, {"name": "c1", "images": 5}]
    assert cli.main(["info", str(path)]) == 0
    assert "40 (10 images + 3 dihedral views each, seed 0)" in capsys.readouterr().out


def test_only_the_console_module_configures_logging() -> None:
    """Library code logs; one function (extractor.console.setup_logging) configures."""
    offenders = []
    for package in ("extractor", "classifier", "service", "featcache"):
        for path in (REPO / package).rglob("*.py"):
            text = path.read_text()
            for call in ("basicConfig(", "addHandler(", "dictConfig(", "fileConfig("):
                if call in text and path != REPO / "extractor" / "console.py":
                    offenders.append(f"{path.relative_to(REPO)}: {call}")
    assert offenders == []
    for module in ("extractor/cli.py", "classifier/cli.py", "featcache/predict_cli.py",
                   "service/cli.py", "featcache/cli.py"):
        assert "console.setup_logging(" in (REPO / module).read_text(), module


def test_import_is_light_and_loads_no_tensorflow() -> None:
    code = ("import sys, featcache, extractor.cli, classifier.cli, featcache.predict_cli, "
            "service.cli, featcache.cli; heavy = [m for m in ('tensorflow', 'keras', 'sklearn', "
            "'h5py', 'numpy', 'onnxruntime', 'fastapi') if m in sys.modules]; "
            "assert not heavy, heavy; print(featcache.__version__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == VERSION


@pytest.mark.parametrize(("line", "expected"), [
    ("featcache ext", "extract"),
    ("featcache extract --poo", "--pooled-layers"),
    ("featcache train-head --he", "--head"),
    ("extract --aug", "--augment"),
])
def test_shell_completion(line: str, expected: str, tmp_path: Path) -> None:
    module = "featcache" if line.startswith("featcache") else "extractor.cli"
    out = tmp_path / "completions"
    env = {**os.environ, "_ARGCOMPLETE": "1", "COMP_LINE": line, "COMP_POINT": str(len(line)),
           "_ARGCOMPLETE_STDOUT_FILENAME": str(out), "_ARGCOMPLETE_IFS": "\n"}
    subprocess.run([sys.executable, "-m", module], env=env, check=True, timeout=60,
                   stdin=subprocess.DEVNULL, capture_output=True)
    assert expected in out.read_text().split()


# --------------------------------------------------------------------------- Ctrl-C


def _mapped(pid: int, library: str) -> bool:
    try:
        return library in Path(f"/proc/{pid}/maps").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True  # gone: let the caller see how it ended


def interrupt(args: list[str], ready: Callable[[int], bool], cwd: Path,
              timeout_s: float = 120) -> tuple[int, str]:
    """Run `python -m featcache ARGS`, send SIGINT once `ready(pid)`, return (status, stderr)."""
    proc = subprocess.Popen([sys.executable, "-m", "featcache", *args], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + timeout_s
        while not ready(proc.pid) and proc.poll() is None:
            assert time.monotonic() < deadline, "never got to the point to interrupt"
            time.sleep(0.005)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=timeout_s)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, err.decode()


def loading(library: str) -> Callable[[int], bool]:
    """Ready once the process has mapped `library`: it is importing it."""
    return lambda pid: _mapped(pid, library)


def blocked(seconds: float) -> Callable[[int], bool]:
    """Ready after `seconds` (for a process that blocks on a FIFO until then)."""
    start = time.monotonic()
    return lambda pid: time.monotonic() - start > seconds


def assert_interrupted(status: int, stderr: str, name: str) -> None:
    assert status == 130, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    assert f"featcache {name}: interrupted" in stderr, stderr


@pytest.mark.slow
def test_ctrl_c_while_extract_loads_tensorflow(small_image_dir: Path, tmp_path: Path) -> None:
    status, err = interrupt(["extract", "--dir", str(small_image_dir), "--out", "x.h5",
                             "--runtime", "keras"], loading("tensorflow"), tmp_path)
    assert_interrupted(status, err, "extract")


@pytest.mark.slow
def test_ctrl_c_while_train_head_loads_tensorflow(tmp_path: Path) -> None:
    cache = synthetic_cache(tmp_path / "t.h5")
    status, err = interrupt(["train-head", "--cache", str(cache), "--head", "dense",
                             "--epochs", "500", "--patience", "500", "--out", "h"],
                            loading("tensorflow"), tmp_path)
    assert_interrupted(status, err, "train-head")
    assert not (tmp_path / "h").exists()


@pytest.mark.slow
def test_ctrl_c_while_predict_loads_tensorflow(
    tmp_path: Path, small_image_dir: Path, small_cache: Path
) -> None:
    from classifier.training import train

    head = train(small_cache, tmp_path / "head", cv=0)
    status, err = interrupt(["predict", "--head", str(head), "--dir", str(small_image_dir),
                             "--out", "p.csv", "--runtime", "keras"],
                            loading("tensorflow"), tmp_path)
    assert_interrupted(status, err, "predict")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["evaluate", "info"])
def test_ctrl_c_while_reading_a_cache_that_does_not_come(name: str, tmp_path: Path) -> None:
    """A cache on a FIFO: the command blocks reading it (as on a stalled network share)."""
    from classifier.training import train

    head = train(synthetic_cache(tmp_path / "t.h5"), tmp_path / "head", cv=0)
    os.mkfifo(tmp_path / "stalled.h5")
    args = {"evaluate": ["evaluate", "--head", str(head), "--cache", "stalled.h5"],
            "info": ["info", "stalled.h5"]}[name]
    status, err = interrupt(args, blocked(1.0), tmp_path)
    assert_interrupted(status, err, name)


@pytest.mark.slow
def test_ctrl_c_while_serve_starts(tmp_path: Path) -> None:
    """Interrupted while it starts (its imports), serve exits 130; once serving, Ctrl-C is its
    normal stop and exits 0 (tests/service/test_serve_cli.py)."""
    from classifier.training import train

    head = train(synthetic_cache(tmp_path / "t.h5"), tmp_path / "head", cv=0)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    status, err = interrupt(["serve", "--head", str(head), "--port", str(port)],
                            loading("pydantic_core"), tmp_path)
    assert_interrupted(status, err, "serve")


@pytest.mark.slow
def test_second_ctrl_c_while_winding_down_is_quiet(tmp_path: Path) -> None:
    """After the first Ctrl-C, a second one ends the process at once, still without a
    traceback (the shell reports 130 for it too)."""
    cache = synthetic_cache(tmp_path / "t.h5")
    proc = subprocess.Popen([sys.executable, "-m", "featcache", "train-head", "--cache",
                             str(cache), "--head", "dense", "--epochs", "500", "--out", "h"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    while not _mapped(proc.pid, "tensorflow") and proc.poll() is None:
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.05)
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode in (130, -signal.SIGINT), err
    assert b"Traceback" not in err
