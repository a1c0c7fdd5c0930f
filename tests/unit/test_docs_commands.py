"""Every saltx command in docs/*.md and README.md composes as written.

The commands are taken from the fenced code blocks and the inline code of the pages:
``python -m saltx.train`` (also ``saltx-train`` and ``torchrun ... -m saltx.train``) is
composed with its overrides as ``--cfg job`` would, and its keys are checked (no key that
no schema declares); ``python -m saltx.evaluate``/``saltx.export`` are composed against
their configs; ``python -m saltx.salt config`` runs (into a temporary folder, so that the
``--config-dir`` of the commands after it finds the experiment).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from saltx.config import check_keys
from saltx.salt.__main__ import main as salt_main

ROOT = Path(__file__).parents[2]
PAGES = [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md"]
ENTRIES = {
    "saltx.train": "train",
    "saltx-train": "train",
    "saltx.evaluate": "evaluate",
    "saltx.export": "export",
    "saltx.salt": "salt",
}
HYDRA_FLAGS = {"-m", "--multirun", "--resolve"}


def commands(page: Path) -> list[str]:
    """Commands of a page: lines of fenced blocks (with ``\\`` continuations), inline code."""
    text = page.read_text()
    out = []
    for lang, block in re.findall(r"```([a-z]*)\n(.*?)```", text, flags=re.S):
        if lang == "text":  # console transcripts (errors shown on purpose)
            continue
        for line in block.replace("\\\n", " ").splitlines():
            out.append(line.strip())
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    out += re.findall(r"`([^`\n]*(?:python -m saltx|saltx-train|torchrun)[^`\n]*)`", prose)
    found = []
    for line in out:
        line = line.removeprefix("$ ").replace(".venv/bin/python", "python")
        try:
            code = " ".join(shlex.split(line, comments=True))
        except ValueError:  # not shell (a table cell, a sentence)
            continue
        placeholder = "<" in code or "..." in code  # prose, e.g. +experiment=<name>
        entry = any(re.search(rf"(^|[\s/]){re.escape(e)}(\s|$)", line) for e in ENTRIES)
        if entry and not placeholder:
            found.append(line)
    return found


CASES = [(p.name, c) for p in PAGES for c in commands(p)]


def split(command: str) -> tuple[str, list[str]]:
    """The entry (train/evaluate/export/salt) and its arguments."""
    args = shlex.split(command, comments=True)
    for i, arg in enumerate(args):
        if arg in ENTRIES:
            return ENTRIES[arg], args[i + 1 :]
    raise AssertionError(f"no saltx entry in {command!r}")


def test_pages_have_commands():
    pages = {name for name, _ in CASES}
    assert {"training.md", "models.md", "salt.md", "evaluation.md", "README.md"} <= pages
    assert len(CASES) > 25


def test_no_experiment_without_plus():
    for page in PAGES:
        bad = re.findall(r"[^\w+/.]experiment=\w+", page.read_text())
        assert not bad, f"{page.name}: {bad} (experiments are added: +experiment=NAME)"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A folder where the pages' `python -m saltx.salt config` commands wrote their output."""
    out = tmp_path_factory.mktemp("docs")
    for _, command in CASES:
        entry, args = split(command)
        if entry == "salt" and args[:1] == ["config"] and len(args) == 4:
            args = [*args[:-1], str(out / args[-1])] if args[-2] in ("-o", "--output") else args
            assert (
                salt_main([str(ROOT / args[1]) if i == 1 else a for i, a in enumerate(args)]) == 0
            )
    return out


@pytest.mark.parametrize(("page", "command"), CASES)
def test_command_composes(page, command, workdir, monkeypatch):
    monkeypatch.chdir(ROOT)
    entry, args = split(command)
    if entry == "salt":  # configs: run by `workdir`; checkpoints: test_salt_checkpoint.py
        assert args[0] in ("config", "checkpoint")
        return
    overrides, config_dir, i = [], None, 0
    while i < len(args):
        if args[i] == "--config-dir":
            config_dir = workdir / args[i + 1]
            i += 2
            continue
        if args[i] == "--cfg":
            i += 2
            continue
        if args[i] not in HYDRA_FLAGS:
            overrides.append(args[i])
        i += 1
    if config_dir is not None:
        overrides.insert(0, f"hydra.searchpath=[file://{config_dir}]")
    with initialize_config_module("saltx.conf", version_base="1.3"):
        cfg = compose(entry, overrides=overrides)
    reference = None
    if entry != "train":
        reference = OmegaConf.load(ROOT / "src" / "saltx" / "conf" / f"{entry}.yaml")
    check_keys(cfg, reference)
