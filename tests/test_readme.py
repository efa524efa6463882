"""The README is executable documentation: its snippets run, and CI runs its test command."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def quick_start() -> list[str]:
    section = README.split("## Quick start", 1)[1]
    return [line for line in _blocks_in(section, "bash")[0].splitlines() if line.strip()]


def _blocks_in(text: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


def test_quick_start_has_exactly_two_commands():
    commands = quick_start()
    assert len(commands) == 2, commands
    assert "anp demo" in commands[0]
    assert "pytest" in commands[1]


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()
    assert ci[-1].strip() == quick_start()[1]


def test_python_snippets_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    snippets = _blocks("python")
    assert snippets
    for code in snippets:
        exec(compile(code, "README.md", "exec"), {"__name__": "__readme__"})
