"""The README stays true: its commands, config table and example configs."""
from __future__ import annotations

from pathlib import Path

from utils import Params, config_reference_markdown

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def test_readme_opens_with_the_two_commands_and_ci_runs_the_test_one():
    first_block = README.split("```bash\n", 1)[1].split("```", 1)[0]
    assert [line.split("#")[0].strip() for line in first_block.strip().splitlines()] == ["make demo", "make test"]
    assert "make test" in (REPO / ".ci" / "run").read_text()


def test_readme_config_table_matches_the_schema():
    assert config_reference_markdown().strip() in README


def test_every_shipped_config_loads(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for path in sorted((REPO / "configs").glob("*.json")):
        params = Params(path)
        assert params.model and params.epochs > 0, path


def test_readme_example_config_is_configs_example_json_and_loads(tmp_path, monkeypatch):
    block = README.split("```jsonc\n", 1)[1].split("```", 1)[0]
    assert block.strip() == (REPO / "configs" / "example.json").read_text().strip()
    (tmp_path / "example.json").write_text(block)
    monkeypatch.chdir(tmp_path)
    params = Params(tmp_path / "example.json")
    assert (params.model, params.pretrained, params.scheduler) == ("efficientnetv2_s", True, "step")

