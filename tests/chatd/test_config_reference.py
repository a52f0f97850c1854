"""docs/configuration.md is what the schema generates, and it explains every key."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import fields

from chatd import config_reference
from chatd.config import SECTIONS


def test_committed_reference_matches_the_schema() -> None:
    committed = config_reference.OUTPUT.read_text("utf-8")
    assert committed == config_reference.render(), (
        "docs/configuration.md is out of date: run scripts/docs"
    )


def test_every_key_is_documented_with_a_description() -> None:
    described = config_reference.example_descriptions(config_reference.EXAMPLE.read_text("utf-8"))
    keys = {f"{section}.{f.name}" for section, cls in SECTIONS.items() for f in fields(cls)}
    missing = sorted(k for k in keys if not described.get(k))
    assert not missing, f"keys without a comment in conf/chatd.example.toml: {missing}"
    document = config_reference.render()
    for key in keys:
        section, _, name = key.partition(".")
        assert f"`CHATD_{section.upper()}__{name.upper()}`" in document


def test_a_new_key_without_docs_would_be_caught() -> None:
    # The description parser must not hand a key the comment of an unrelated block.
    text = "[server]\n# Listener.\n# bind = 'x'\n\n# data_dir = 'y'\n"
    found = config_reference.example_descriptions(text)
    assert found == {"server.bind": "Listener.", "server.data_dir": ""}


def test_check_mode_reports_drift() -> None:
    ok = subprocess.run(
        [sys.executable, "-m", "chatd.config_reference", "--check"], capture_output=True, text=True
    )
    assert ok.returncode == 0, ok.stderr
