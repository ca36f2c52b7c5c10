"""The CLI without the development kit: the operator image lacks cryptography; `foreshard run` works."""

from __future__ import annotations

import sys

import pytest

from foreshard.cli import main

pytestmark = pytest.mark.unit


def test_a_command_whose_dependency_is_missing_says_so_and_the_others_still_parse(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in [m for m in sys.modules if m.startswith(("foreshard.cli.", "foreshard.localcluster"))]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "cryptography", None)  # import cryptography now fails

    assert main(["cluster", "up"]) == 1
    assert "needs the Python package 'cryptography'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as shown:
        main(["run", "--help"])
    assert shown.value.code == 0
    assert "--metrics-port" in capsys.readouterr().out
