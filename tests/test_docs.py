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


def readme_commands() -> list[list[str]]:
    """Each ```bash block of the README as its commands (continuation lines joined, comments dropped)."""
    blocks = [block.split("```", 1)[0] for block in README.split("```bash\n")[1:]]
    return [[command for command in block.replace("\\\n", " ").splitlines()
             if command.strip() and not command.lstrip().startswith("#")] for block in blocks]


def test_readme_blocks_build_the_soundscapes_each_trained_recipe_names(monkeypatch):
    """A block that trains a shipped recipe also builds every soundscape folder the recipe reads."""
    monkeypatch.chdir(REPO)
    checked = 0
    for commands in readme_commands():
        for command in commands:
            words = command.split()
            if "train.py" not in " ".join(words[:2]) or "--config_path" not in words:
                continue
            config = Path(words[words.index("--config_path") + 1])
            if not config.is_file():  # a copy the block writes (e.g. with sed)
                continue
            params = Params(config)
            built = {str(Path(words[words.index("--out") + 1]).resolve()) for words in map(str.split, commands)
                     if "tools.soundscapes" in words and "--out" in words}
            for key in ("train_soundscapes", "detection_soundscapes"):
                folder = getattr(params, key)
                if folder is not None:
                    assert str(Path(folder).resolve()) in built, f"{config}: {key} {folder} is not built in its block"
                    checked += 1
    assert checked >= 2  # the cry recipe's two folders at least
