"""Tests of the greet command line."""

from greet.cli import main


def test_greets_by_name(capsys) -> None:
    assert main(["Ada"]) == 0
    assert capsys.readouterr().out == "Hello, Ada!\n"


def test_shouts(capsys) -> None:
    assert main(["Ada", "--shout"]) == 0
    assert capsys.readouterr().out == "HELLO, ADA!\n"
