"""The standalone broker's credentials: the users file, the check, and the flags that set them."""

from __future__ import annotations

from pathlib import Path

import pytest

from stomp import Users
from stomp.__main__ import main


def test_users_file_lines() -> None:
    users = Users.parse("# ops\nguest:guest\n\nadmin:a:b c \nguest:again\n")
    assert len(users) == 2
    assert users.check("admin", "a:b c ")  # all after the first ':', spaces included
    assert users.check("guest", "again")  # a later line wins
    assert not users.check("guest", "guest")


@pytest.mark.parametrize("text", ["guest", ":pw", "guest:", " \nx\n"])
def test_users_file_rejects_lines_that_are_no_pair(text: str) -> None:
    with pytest.raises(ValueError, match=r"users\.txt, line \d: expected user:password"):
        Users.parse(text, "users.txt")


@pytest.mark.parametrize(
    ("login", "passcode"),
    [
        ("guest", "guest"),
        ("guest", "wrong"),
        ("guest", ""),
        ("guest", None),
        (None, "guest"),
        (None, None),
        ("", ""),
        ("nobody", "guest"),
        ("GUEST", "guest"),
    ],
)
def test_only_a_known_pair_passes(login: str | None, passcode: str | None) -> None:
    users = Users([("guest", "guest")])
    assert users.check(login, passcode) is ((login, passcode) == ("guest", "guest"))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--login", "guest"], "--login and --passcode go together"),
        (["--passcode", "guest"], "--login and --passcode go together"),
        (["--login", "guest", "--passcode", ""], "non-empty name and password"),
    ],
)
def test_bad_credential_flags_exit_before_serving(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--tcp", "127.0.0.1:0", *argv])
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("guest\n", "line 1: expected user:password"),
        ("# nobody yet\n", "no users in"),
    ],
)
def test_bad_users_file_exits_before_serving(
    tmp_path: Path, text: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "users.txt"
    path.write_text(text)
    with pytest.raises(SystemExit) as exited:
        main(["--tcp", "127.0.0.1:0", "--users", str(path)])
    assert exited.value.code == 2
    assert message in capsys.readouterr().err
