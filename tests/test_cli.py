"""The command line's start-up: help texts load neither torch nor diffusers, and every parser's action
names a real function (sdlora.cli's one lazy import)."""
from __future__ import annotations

import json
import subprocess
import sys

from sdlora.cli import action, build_parser, main
from sdlora.commands import COMMANDS

HEAVY = ("torch", "diffusers", "transformers", "safetensors")

_PROBE = """
import contextlib, io, json, sys
from sdlora.cli import main
seen = {}
for argv in json.loads(sys.argv[1]):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            main(argv + ["--help"])
            code = 0
        except SystemExit as exc:
            code = exc.code
    seen[" ".join(argv) or "(top level)"] = {"code": code, "chars": len(out.getvalue()),
                                             "heavy": [m for m in %r if m in sys.modules]}
print(json.dumps(seen))
""" % (HEAVY,)


def _command_names() -> list[str]:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return sorted(sub.choices)


def test_every_help_text_loads_no_heavy_module():
    names = _command_names()
    assert len(names) == len(COMMANDS) >= 11 and {"generate", "train", "inspect", "studio"} <= set(names)
    argvs = [[]] + [[n] for n in names]
    proc = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(argvs)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(seen) == len(argvs)
    for name, got in seen.items():  # checked after each help in turn: the first heavy one is named
        assert got["code"] == 0 and got["chars"] > 200, (name, got)
        assert got["heavy"] == [], f"`sdlora {name} --help` imported {', '.join(got['heavy'])}"


def test_the_console_script_help_in_a_fresh_process():
    code = ("import sys\nfrom sdlora.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('torch' in sys.modules, 'diffusers' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "Train, inspect, apply, merge and bake" in proc.stdout
    assert proc.stdout.strip().splitlines()[-1] == "False False"


def test_every_action_names_a_function_of_its_actions_module():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for name, parser in sub.choices.items():
        target = parser.get_default("func")
        assert target == f"sdlora.commands.actions.{name}:run", (name, target)
        run = action(target)
        assert callable(run) and run.__module__ == f"sdlora.commands.actions.{name}"


def test_no_command_prints_help_and_exits_zero(capsys):
    assert main([]) == 0
    assert "COMMAND" in capsys.readouterr().out
