"""The README's two commands are the ones users and CI run: keep .ci/run identical to the test command."""
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command_verbatim():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci/run").read_text().strip().splitlines()[-1]
    blocks = readme.split("```")
    commands = [b.strip().removeprefix("bash").strip() for b in blocks[1:4:2]]
    assert commands[1] == ci
    assert commands[0].endswith("fairlit fit --config configs/bpr/ml-100k.yaml")
