"""Every command in the README and docs/usage.md runs as written, in a folder laid out as a user's clone.

Each `python ...` line of a bash block is run from a working folder with `../shared` beside it and
small checkpoints under `outputs/`. Only the cost is cut: training commands get `--dry-run`, attacks
and radius curves run on 100 test images with a 2-step PGD. A figure written in a command's comment
("# 97.180 / 74.130") must be what the command prints.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import OFFLINE_ENV, REPO, results
from training import recipe_files_table, recipe_flag_table

DOCUMENTS = ("README.md", "docs/usage.md")
FIGURES = re.compile(r"^\s*(\d+\.\d{3}) / (\d+\.\d{3})\s*$")  # a comment: the two printed results


def documented_commands() -> list[tuple[str, str, str]]:
    """(document, command, comment) for every `python` line of the documents' bash blocks, continuations joined."""
    commands = []
    for document in DOCUMENTS:
        for block in re.findall(r"```bash\n(.*?)```", (REPO / document).read_text(), re.S):
            for line in block.replace("\\\n", " ").splitlines():
                command, _, comment = line.partition(" #")
                words = shlex.split(command)
                program = [w for w in words if "=" not in w][:2]
                if program[:1] == ["python"] and program[1:] != ["-m"]:
                    commands.append((document, " ".join(words), comment))
    return commands


COMMANDS = documented_commands()


@pytest.fixture(scope="module")
def clone(tmp_path_factory, trained, l2_trained, relu_checkpoint, cnn_trained, mnist_root, original_demo) -> Path:
    """A working folder like a user's clone: ../shared beside it, the documented checkpoints and curves in outputs/."""
    top = tmp_path_factory.mktemp("user")
    work = top / "repo"
    (work / "outputs").mkdir(parents=True)
    (top / "shared").mkdir()
    (top / "shared" / "mnist").symlink_to(mnist_root)
    (top / "shared" / "original-demo").symlink_to(original_demo)
    shutil.copy(trained[0], work / "outputs" / "mnist_groupsort.p")
    shutil.copy(relu_checkpoint, work / "outputs" / "mnist_relu.p")  # a ReLU net where the documents name one
    shutil.copy(l2_trained[0], work / "outputs" / "mnist_l2.p")  # what --recipe l2 writes
    shutil.copy(cnn_trained[0], work / "outputs" / "mnist_cnn-ibp.p")  # a small CNN where --recipe cnn-ibp's is named
    (work / "path" / "to").mkdir(parents=True)
    (work / "path" / "to" / "custom.json").write_text('{"hidden": [100]}\n')
    curve = "norm,eps,clean,global\nlinf,0,90.000,80.000\nlinf,0.1,90.000,50.000\n"
    for name in ("curves_groupsort.csv", "curves_relu.csv"):
        (work / "outputs" / name).write_text(curve)
    generator = torch.Generator().manual_seed(0)
    for name in ("P.npy", "Q.npy"):  # wasserstein.py's samples
        np.save(work / name, torch.randn(50, 3, generator=generator, dtype=torch.float64).numpy())
    return work


def cheaper(words: list[str]) -> list[str]:
    """The same command at a fraction of the cost: a dry run, or fewer test images and PGD steps."""
    script = next(w for w in words if w.endswith(".py"))
    if script == "train_mnist.py":
        return [*words, "--dry-run"]
    if script == "certify.py" and ("--attack" in words or "--eps" in words):
        return [*words, "--limit", "100", "--pgd-steps", "2", "--pgd-restarts", "1"]
    if script == "wasserstein.py":
        return [*words, "--steps", "2", *(["--holdout", "64"] if "--task" in words else [])]
    if script == "certify.py" and {"lp", "exact", "best"} & set(words):
        return [*words, "--limit", "10", "--time-limit", "2", "--pgd-steps", "2", "--pgd-restarts", "1"]
    return words


def test_the_documents_hold_commands_of_every_script():
    scripts = {next(w for w in shlex.split(command) if w.endswith(".py")) for _, command, _ in COMMANDS}
    assert scripts == {"train_mnist.py", "certify.py", "curves.py", "wasserstein.py"}


@pytest.mark.parametrize("document, command, comment", COMMANDS,
                         ids=[f"{document}: {command[:70]}" for document, command, _ in COMMANDS])
def test_a_documented_command_runs_as_written(document, command, comment, clone, mnist_root):
    words = shlex.split(command)
    inline = dict(w.split("=", 1) for w in words if "=" in w and not w.startswith("-") and w.index("=") > 0
                  and w.split("=", 1)[0].isupper())
    words = [w for w in words if w.split("=", 1)[0] not in inline]
    env = {**OFFLINE_ENV, "MNIST_ROOT": str(mnist_root), **inline}
    argv = [sys.executable, *[str(REPO / w) if w.endswith(".py") else w for w in cheaper(words)[1:]]]
    run = subprocess.run(argv, cwd=clone, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, (command, run.stderr)
    figures = FIGURES.search(comment)
    if figures:
        assert results(run.stdout) == {"acc": float(figures[1]), "certified": float(figures[2])}


def test_the_python_blocks_run_as_written_in_a_users_clone(clone):
    """The documents' ```python blocks (loading a model from a notebook) run in a clone's folder."""
    blocks = [block for document in DOCUMENTS
              for block in re.findall(r"```python\n(.*?)```", (REPO / document).read_text(), re.S)]
    assert blocks
    for block in blocks:
        code = block.replace('sys.path.insert(0, ".")', f"sys.path.insert(0, {str(REPO)!r})")
        run = subprocess.run([sys.executable, "-c", code], cwd=clone, env=OFFLINE_ENV, capture_output=True,
                             text=True, timeout=600)
        assert run.returncode == 0, run.stderr
        assert float(run.stdout.split()[0]) > 50 and "'margin'" in run.stdout and "'ibp'" in run.stdout


def test_the_recipe_flag_table_of_the_usage_is_generated_from_the_recipes_declaration():
    """docs/usage.md's table of recipe flags is `training.recipe_flag_table()`, between its two markers."""
    usage = (REPO / "docs/usage.md").read_text()
    tables = re.findall(r"<!-- recipe-flags:start -->\n(.*?)<!-- recipe-flags:end -->", usage, flags=re.S)
    assert tables == [recipe_flag_table()], \
        "regenerate it: python -c 'import training; print(training.recipe_flag_table(), end=\"\")'"


def test_the_recipes_table_is_made_from_the_recipe_files():
    """docs/usage.md's table of named recipes is `training.recipe_files_table()`: every file, its entries as flags."""
    usage = (REPO / "docs/usage.md").read_text()
    tables = re.findall(r"<!-- recipe-files:start -->\n(.*?)<!-- recipe-files:end -->", usage, flags=re.S)
    assert tables == [recipe_files_table()], \
        "regenerate it: python -c 'import training; print(training.recipe_files_table(), end=\"\")'"
    assert len(tables[0].splitlines()) == 2 + len(list((REPO / "recipes").glob("*.json")))


def test_modules_import_only_the_modules_above_them_in_the_readme_layout():
    """The README's layout table is the import order: one concept per file, imports only downward."""
    import ast

    layout = re.findall(r"^\| `(\w+)\.py` \|", (REPO / "README.md").read_text(), flags=re.M)
    modules = {path.stem for path in REPO.glob("*.py")}
    assert set(layout) == modules
    for position, name in enumerate(layout):
        imported = set()
        for node in ast.walk(ast.parse((REPO / f"{name}.py").read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module.split(".")[0])
        assert imported & modules <= set(layout[:position]), f"{name}.py imports a module below it"


def test_the_troubleshooting_table_names_every_recipe():
    """The usage's quoted 'no recipe' message lists the recipes there are (it once listed 5 of 9)."""
    quoted = re.search(r"the named recipes are ([\w., -]+)`", (REPO / "docs/usage.md").read_text())[1]
    assert quoted.split(", ") == sorted(path.stem for path in (REPO / "recipes").glob("*.json"))


def test_the_readme_stays_the_front_door():
    """About 200 lines: what the demo shows, set-up, expected output, the reproduction, how it works, the layout."""
    assert len((REPO / "README.md").read_text().splitlines()) <= 200


def test_every_mutant_mutates_text_that_is_there_once():
    """scripts/mutants.py stops at a mutant whose original text a refactor changed: caught here, not there
    (two were, after the Affine operator and the deep L2 allowance)."""
    spec = importlib.util.spec_from_file_location("mutants", REPO / "scripts" / "mutants.py")
    mutants = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mutants)
    stale = [(number, file, what) for number, (file, original, _, what) in enumerate(mutants.MUTANTS, 1)
             if (REPO / file).read_text().count(original) != 1]
    assert stale == []
