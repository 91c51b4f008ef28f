"""The README's command and Python examples are examples/*, shown verbatim, and they run on real
images; its sections follow a user's path and its links land on its headings."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from featcache import cli

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()
EXAMPLES = ["quickstart.sh", "best_accuracy.sh", "python_api.py", "cross_validation.py"]


@pytest.mark.parametrize("name", EXAMPLES)
def test_readme_shows_the_example_as_it_is(name: str) -> None:
    source = (REPO / "examples" / name).read_text().rstrip("\n")
    fence = "bash" if name.endswith(".sh") else "python"
    assert f"```{fence}\n{source}\n```" in README, f"README must show examples/{name} verbatim"


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_sections_follow_a_users_path_and_links_resolve() -> None:
    headings = re.findall(r"^(#{2,3}) (.+)$", README, re.M)
    top = [h for level, h in headings if level == "##"]
    order = ["How it fits together", "Set-up", "Quick start", "extract", "train-head",
             "evaluate and predict", "serve", "Docker", "Python API", "Troubleshooting",
             "Development"]
    found = [next(i for i, h in enumerate(top) if h.startswith(want)) for want in order]
    assert found == sorted(found), top
    anchors = {_anchor(h) for _, h in headings}
    for link in re.findall(r"\]\(#([^)]+)\)", README):
        assert link in anchors, f"README links to #{link}, which is no heading"


def test_readme_documents_every_command_and_the_architecture() -> None:
    for name in cli.COMMANDS:
        assert f"featcache {name}" in README, name
    diagram = README[README.index("```mermaid"):]
    diagram = diagram[:diagram.index("\n```\n")]
    for package in ("extractor/", "classifier/", "service/"):
        assert package in diagram
    for stage in ("extract", "train-head", "serve", "HDF5 feature cache", "head artifact"):
        assert stage in diagram
    for topic in ("FEATCACHE_HOME", "HTTPS_PROXY", "FEATCACHE_ORT_PROVIDERS", "onnxruntime-gpu",
                  "aarch64", "missing", "register-python-argcomplete", "--json", "130"):
        assert topic in README, topic


@pytest.fixture(scope="module")
def folders(small_image_dir: Path, elpv_dir: Path,
            tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """train: 12 real images per class; validation: 3 per class; new: 2 unlabelled files."""
    root = tmp_path_factory.mktemp("readme")
    for cls in ("defective", "functional"):
        (root / "validation" / cls).mkdir(parents=True)
        for src in sorted((elpv_dir / "validation" / cls).iterdir())[:3]:
            shutil.copy(src, root / "validation" / cls / src.name)
    (root / "new").mkdir()
    for src in sorted(small_image_dir.rglob("*.png"))[:2]:
        shutil.copy(src, root / "new" / src.name)
    return {"train": small_image_dir, "validation": root / "validation", "new": root / "new"}


@pytest.mark.slow
def test_quickstart_runs(folders: dict[str, Path], tmp_path: Path) -> None:
    # `featcache` as `pip install` makes it, for this checkout (the shared environment's
    # console script may predate it).
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "featcache"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m featcache "$@"\n')
    shim.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{Path(sys.executable).parent}"
           f"{os.pathsep}{os.environ['PATH']}"}
    work = tmp_path / "work"
    out = subprocess.run(["bash", str(REPO / "examples" / "quickstart.sh"), str(folders["train"]),
                          str(folders["validation"]), str(folders["new"]), str(work)],
                         env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert re.search(r"^validation accuracy: [01]\.\d+$", out.stdout, re.M), out.stdout
    assert "confusion matrix" in out.stdout  # evaluate's table
    assert "datasets:" in out.stdout and "selection:" in out.stdout  # info on cache and head
    assert (work / "predictions.csv").read_text().count("\n") == 3


@pytest.mark.slow
def test_best_accuracy_sequence_runs(folders: dict[str, Path], tmp_path: Path) -> None:
    """Issue 10's sequence, verbatim: 8 views per image in both caches, the default head
    trained on them, and evaluate averaging over the 8 views of each validation image."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    work = tmp_path / "work"
    # Relative paths, as a user types them: the script runs its steps in WORK_DIR.
    out = subprocess.run(["bash", str(REPO / "examples" / "best_accuracy.sh"),
                          os.path.relpath(folders["train"], tmp_path),
                          os.path.relpath(folders["validation"], tmp_path), "work"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout[out.stdout.rindex("\n{") + 1:])
    assert report["images"] == 6 and report["views_averaged"] == 8
    assert 0.0 <= report["accuracy"] <= 1.0
    metadata = json.loads((work / "heads" / "best" / "metadata.json").read_text())
    assert metadata["views"]["count"] == 7 and metadata["views"]["mode"] == "dihedral"
    assert metadata["selection"]["chosen"]


@pytest.mark.slow
def test_python_api_example_runs(folders: dict[str, Path], tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, str(REPO / "examples" / "python_api.py"),
                          str(folders["train"]), str(folders["validation"]), str(tmp_path)],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert "24 images cached, 0 skipped" in out.stdout
    assert re.search(r"^validation accuracy [01]\.\d{3}$", out.stdout, re.M), out.stdout
    assert len(re.findall(r"^cell\w+\.png (defective|functional) \{", out.stdout, re.M)) == 4
    assert out.stderr.strip() == "", out.stderr  # no progress bar, no log unless asked


@pytest.mark.slow
def test_cross_validation_example_runs(small_cache: Path) -> None:
    sys.path.insert(0, str(REPO / "examples"))
    try:
        import cross_validation
    finally:
        sys.path.remove(str(REPO / "examples"))
    means = cross_validation.main(str(small_cache))
    assert set(means) == {0.01, 0.1, 1.0}
    assert all(0.5 <= m <= 1.0 for m in means.values())
