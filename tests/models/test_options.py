"""models.config + realtime.cli.options: one declaration gives flags, help, validation and the reproducing command."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import pytest

from models.config import check, fields, opt
from models.errors import UserError
from realtime.cli.options import add_config, command_line, config_from_args


@dataclass
class Demo:
    """A config with one field of every supported kind."""

    count: int = opt(3, "how many", min=1, max=10)
    rate: float = opt(0.5, "a rate", min=0.0)
    mode: str = opt("a", "the mode", choices=("a", "b"))
    on: bool = opt(False, "switch it on")
    where: Path | None = opt(None, "a folder", metavar="DIR")
    names: list[str] = opt(default_factory=lambda: ["x", "y"], help="some names")
    hidden: int = opt(7, "set from code only", cli=False)
    urls: list[str] = opt(default_factory=list, help="one per flag", repeat=True, flag="--url")
    seeds: list[int] = opt(default_factory=lambda: [1, 2], help="integers")


def parse(argv: list[str], prefix: str = "") -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_config(p, Demo, prefix=prefix)
    return p.parse_args(argv)


def test_flags_round_trip_and_defaults():
    cfg = config_from_args(Demo, parse([]))
    assert cfg == Demo()
    cfg = config_from_args(Demo, parse(["--count", "5", "--rate", "2", "--mode", "b", "--on", "--where", "/tmp",
                                        "--names", "p", "q", "r"]))
    assert (cfg.count, cfg.rate, cfg.mode, cfg.on, cfg.where, cfg.names) == (5, 2.0, "b", True, Path("/tmp"),
                                                                            ["p", "q", "r"])
    assert cfg.hidden == 7
    assert command_line("tool run", cfg) == "tool run --count 5 --rate 2.0 --mode b --on --where /tmp --names p q r"
    assert config_from_args(Demo, parse(["--calib-count", "4"], prefix="calib_"), prefix="calib_").count == 4
    assert config_from_args(Demo, parse(["--url", "a", "--url", "b"])).urls == ["a", "b"]
    assert Demo().urls == [] and config_from_args(Demo, parse([])).urls == []
    assert config_from_args(Demo, parse(["--seeds", "4", "5,6"])).seeds == [4, 5, 6]
    with pytest.raises(UserError, match="--seeds takes int values, got 'x'"):
        config_from_args(Demo, parse(["--seeds", "x"]))


def test_help_comes_from_the_declaration():
    p = argparse.ArgumentParser()
    add_config(p, Demo)
    text = p.format_help()
    assert "how many (default 3)" in text and "--no-on" in text and "DIR" in text and "--hidden" not in text
    assert [f.name for f in fields(Demo)][:2] == ["count", "rate"]


@pytest.mark.parametrize("argv, message", [
    (["--count", "0"], "--count must be ≥ 1"),
    (["--count", "11"], "--count must be ≤ 10"),
    (["--rate", "nan"], "--rate must be a finite number"),
    (["--rate", "-1"], "--rate must be ≥ 0"),
])
def test_bad_values_are_one_clear_user_error(argv, message):
    with pytest.raises(UserError, match=message):
        config_from_args(Demo, parse(argv))


def test_check_catches_wrong_types_from_code_or_files():
    with pytest.raises(UserError, match="--count must be int"):
        check(Demo(count="3"))  # type: ignore[arg-type]
    with pytest.raises(UserError, match="--mode must be one of a, b"):
        check(Demo(mode="c"))
    with pytest.raises(UserError, match="cfg: --on must be bool"):
        check(Demo(on=1), "cfg")  # type: ignore[arg-type]
