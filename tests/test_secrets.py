"""Secrets come from a private YAML file first, then the environment; errors never show values."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from ci_runner.errors import UsageError
from ci_runner.secrets import resolve_secrets

if TYPE_CHECKING:
    from pathlib import Path


def _secrets_file(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "secrets.yml"
    path.write_text(text)
    path.chmod(mode)
    return path


def test_file_wins_over_environ_and_environ_fills_the_rest(tmp_path: Path) -> None:
    path = _secrets_file(tmp_path, "TOKEN: from-file\nKEY: |\n  line one\n  line two\n")
    got = resolve_secrets(
        ["TOKEN", "KEY", "OTHER"],
        environ={"TOKEN": "from-env", "OTHER": "env-only"},
        secrets_file=path,
    )
    assert got == {"TOKEN": "from-file", "KEY": "line one\nline two\n", "OTHER": "env-only"}


def test_no_names_needs_no_file(tmp_path: Path) -> None:
    path = _secrets_file(tmp_path, "TOKEN: x", mode=0o644)
    assert resolve_secrets([], environ={}, secrets_file=path) == {}


def test_missing_file_counts_as_empty(tmp_path: Path) -> None:
    got = resolve_secrets(["A"], environ={"A": "1"}, secrets_file=tmp_path / "absent.yml")
    assert got == {"A": "1"}


def test_unset_secret_says_how_to_set_it(tmp_path: Path) -> None:
    path = _secrets_file(tmp_path, "OTHER: x\n")
    with pytest.raises(UsageError) as info:
        resolve_secrets(["TOKEN"], environ={}, secrets_file=path)
    assert str(info.value) == f"secret 'TOKEN' is not set: export TOKEN=... or add it to {path}"
    with pytest.raises(UsageError, match=r"^secret 'TOKEN' is not set: export TOKEN=\.\.\.$"):
        resolve_secrets(["TOKEN"], environ={})


@pytest.mark.parametrize("name", ["", "1ABC", "A-B", "A B", "ÄBC", "A\n"])
def test_bad_names_are_refused(name: str) -> None:
    with pytest.raises(UsageError, match="bad secret name"):
        resolve_secrets([name], environ={name: "x"})


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644])
def test_file_open_to_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = _secrets_file(tmp_path, "TOKEN: x\n", mode=mode)
    with pytest.raises(UsageError, match=f"chmod 600 {path}"):
        resolve_secrets(["TOKEN"], environ={}, secrets_file=path)


def test_non_string_values_must_be_quoted(tmp_path: Path) -> None:
    path = _secrets_file(tmp_path, "PORT: 0x1F\nEMPTY:\n")
    with pytest.raises(UsageError, match=r"'PORT' .* not a string \(YAML read it as int\): quote"):
        resolve_secrets(["PORT"], environ={}, secrets_file=path)
    with pytest.raises(UsageError, match=r"'EMPTY' .* has no value"):
        resolve_secrets(["EMPTY"], environ={}, secrets_file=path)


def test_yaml_errors_do_not_quote_the_file(tmp_path: Path) -> None:
    path = _secrets_file(tmp_path, "TOKEN: s3cr3t-value\n  bad: [s3cr3t-value\n")
    with pytest.raises(UsageError, match="not valid YAML") as info:
        resolve_secrets(["TOKEN"], environ={}, secrets_file=path)
    assert "s3cr3t" not in str(info.value)


def test_file_that_is_not_a_mapping_is_refused(tmp_path: Path) -> None:
    path = _secrets_file(tmp_path, "- TOKEN\n")
    with pytest.raises(UsageError, match="not a mapping"):
        resolve_secrets(["TOKEN"], environ={}, secrets_file=path)


def test_empty_file_is_empty(tmp_path: Path) -> None:
    path = _secrets_file(tmp_path, "")
    assert resolve_secrets(["A"], environ={"A": "1"}, secrets_file=path) == {"A": "1"}
