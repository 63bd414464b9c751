"""The project's set-up files agree with each other."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~ \[]", requirement, maxsplit=1)[0].strip().lower()


def test_environment_yml_is_the_package_and_its_notebooks_with_the_same_bounds():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    wanted = project["dependencies"] + extras["notebooks"]
    conda_names = {"torch": "pytorch"}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    listed = {_name(d): d for d in env["dependencies"] + pip_section if isinstance(d, str) and not d.startswith("-")}
    for requirement in wanted:
        name = conda_names.get(_name(requirement), _name(requirement))
        assert name in listed, f"{requirement} is in pyproject.toml but not environment.yml"
        bound = requirement[len(_name(requirement)):]
        assert listed[name].endswith(bound), f"{listed[name]!r} differs from pyproject's {requirement!r}"
    test_only = {_name(r) for r in extras["test"]} - {_name(r) for r in wanted}
    assert test_only >= {"fusion-bench", "peft", "transformers", "pytest"}
    assert not test_only & set(listed), f"test-only libraries in environment.yml: {sorted(test_only & set(listed))}"
    assert "-e ." in pip_section


def test_demo_installs_the_package_alone_and_the_tests_add_their_extras():
    assert "FREQMERGE_EXTRAS" not in (ROOT / "scripts" / "demo.sh").read_text()
    for script in ("scripts/test.sh", ".ci/run", "scripts/run_notebooks.sh"):
        assert "FREQMERGE_EXTRAS=test source" in (ROOT / script).read_text(), script


def test_torch_is_a_range_so_an_existing_cuda_build_is_kept():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    torch_requirement = next(d for d in project["dependencies"] if _name(d) == "torch")
    assert ">=" in torch_requirement and "==" not in torch_requirement


def test_readme_quick_start_has_two_commands_and_ci_runs_the_test_one():
    readme = (ROOT / "README.md").read_text()
    quick_start = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```(?:bash|sh)?\n(.*?)```", quick_start, re.S).group(1)
    commands = [line.split("#")[0].strip() for line in block.splitlines() if line.split("#")[0].strip()]
    assert len(commands) == 2, commands
    test_command = next(c for c in commands if "test" in c)
    assert test_command.replace("./", "") in (ROOT / ".ci" / "run").read_text()


def test_wheel_install_finds_the_shipped_zoo(tmp_path):
    """A non-editable install carries data/zoo and loads it with no path given."""
    import os
    import subprocess
    import sys
    import sysconfig

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "FREQMERGE_ZOO")}
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(pip + ["wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "wheel")],
                   check=True, env=env, capture_output=True)
    wheel = next((tmp_path / "wheel").glob("freqmerge_viz-*.whl"))
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "venv")], check=True, env=env)
    python = tmp_path / "venv" / "bin" / "python"
    venv_site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip()
    Path(venv_site, "runner_packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(pip + ["--python", str(python), "install", "--no-deps", str(wheel)], check=True, env=env,
                   capture_output=True)
    probe = ("import freqmerge_viz as f; z = f.zoo.load(); "
             "print(f.__file__); print(z.path); print(len(z.tasks))")
    run = subprocess.run([str(python), "-c", probe], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    out = run.stdout.split()
    assert out[0].startswith(str(tmp_path / "venv"))
    assert out[1] == str(tmp_path / "venv" / "share" / "freqmerge-viz" / "zoo")
    assert out[2] == "8"
