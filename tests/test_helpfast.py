"""helpfast: `--help` without rich.markdown / rich.traceback, printing exactly what typer prints
with them, and leaving the real modules importable afterwards."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

HELP = """
    import json, sys
    {before}
    from typer.testing import CliRunner
    from facescore_cli.cli import app
    res = CliRunner().invoke(app, {args!r}, prog_name="facescore", env={{"COLUMNS": "100"}})
    loaded = sorted(m for m in ("rich.markdown", "rich.traceback", "rich.pretty", "attr", "markdown_it") if m in sys.modules)
    print(json.dumps({{"code": res.exit_code, "out": res.output, "loaded": loaded}}))
"""


def help_of(args: list[str], before: str = "") -> dict:
    env = {**os.environ, "COLUMNS": "100", "TERM": "dumb"}
    res = subprocess.run([sys.executable, "-c", textwrap.dedent(HELP.format(before=before, args=args))],
                         capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.splitlines()[-1])


@pytest.mark.parametrize("args", [["--help"], ["score", "--help"], ["evaluate", "-h"], ["serve", "api", "--help"]])
def test_help_is_the_same_without_markdown_and_traceback(args):
    fast = help_of(args)
    # typer.rich_utils imported first: install() then stands aside and typer imports everything
    full = help_of(args, before="import typer.rich_utils")
    assert fast["code"] == full["code"] == 0
    assert "Usage: facescore" in fast["out"] and fast["out"] == full["out"]
    assert fast["loaded"] == []
    assert "rich.markdown" in full["loaded"] and "rich.traceback" in full["loaded"]


def test_the_real_modules_are_there_after_help():
    code = """
        import sys
        from facescore_cli import helpfast
        helpfast.install()
        import typer.rich_utils as ru
        assert "rich.markdown" not in sys.modules and "rich.traceback" not in sys.modules
        md = ru.Markdown("# title")            # a stand-in: the first call imports the real class
        import rich.markdown, rich.traceback
        assert type(md) is rich.markdown.Markdown and isinstance(md, ru.Markdown)
        assert not hasattr(rich.traceback, "_facescore_stand_in")
        try:
            1 / 0
        except ZeroDivisionError as exc:
            tb = ru.Traceback.from_exception(type(exc), exc, exc.__traceback__)   # attribute: forwarded
        assert type(tb) is rich.traceback.Traceback
        print("ok")
    """
    res = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "ok"
