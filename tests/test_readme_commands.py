"""The README's commands as a newcomer copies them: every ``affcons`` sub-command, ``python`` script and config they
name exists, and the README says how to reach the venv's commands (a fresh shell has no activated venv)."""

import re
import shlex
from pathlib import Path

from affcons.cli import commands
from affcons.config import resolve_config_path

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()


def shell_commands() -> list[list[str]]:
    """The commands of the README's bash blocks (continuation lines joined, comments dropped), as argv lists."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            if line and not line.startswith("#"):
                for part in re.split(r"&&|;", line):
                    words = shlex.split(part.replace("[", "").replace("]", "").replace("|", " "))
                    if words:
                        commands.append(words)
    return commands


def test_the_readme_says_how_to_reach_the_venvs_commands():
    assert "source .venv/bin/activate" in README and ".venv/bin/affcons" in README


def test_every_affcons_sub_command_python_script_and_config_in_the_readme_exists():
    sub_commands = commands()
    checked = 0
    for words in shell_commands():
        program = Path(words[0]).name
        if program == "affcons" and len(words) > 1 and not words[1].startswith("-"):
            assert words[1] in sub_commands, f"README: affcons {words[1]} does not exist ({' '.join(words)})"
            for flag in ("-c", "--config"):
                if flag in words and words[1] in ("run", "train", "pretrain"):
                    resolve_config_path(words[words.index(flag) + 1])
            checked += 1
        elif program in ("python", "python3") and len(words) > 1 and words[1].endswith(".py"):
            assert (REPO / words[1]).is_file(), f"README: {words[1]} does not exist"
            checked += 1
        elif program == "bash" and words[1].endswith(".sh"):
            assert (REPO / words[1]).is_file(), f"README: {words[1]} does not exist"
            checked += 1
    assert checked >= 20, checked
