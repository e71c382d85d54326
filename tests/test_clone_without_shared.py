"""The README's test command in a clone with no ../shared beside it: tests on the real samples skip
with one reason line, the rest (the fault matrix and damage tests' core included) runs on data the
tests write, and CI's FASTCSI_REQUIRE_SHARED=1 turns the missing folder into a failure."""
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# a path built to ../shared anywhere but the shared_data fixture would be read whether or not it is there
# (a quoted README path inside a string, '"../shared/...', is text, not a path)
SHARED_PATH = re.compile(r"""/\s*["']shared["']|(?<!')["']\.\./shared""")


def test_only_the_fixture_names_the_shared_folder():
    offenders = [str(p.relative_to(ROOT)) for p in sorted((ROOT / "tests").rglob("*.py"))
                 if p.name != "conftest.py" or p.parent != ROOT / "tests"
                 if SHARED_PATH.search(p.read_text())]
    assert offenders == [], f"read ../shared through the shared_data fixture: {offenders}"


def _pytest(tmp_path, *args, **env):
    environment = {k: v for k, v in os.environ.items() if k != "FASTCSI_REQUIRE_SHARED"}  # CI's, when run there
    environment.update(FASTCSI_SHARED=str(tmp_path / "no-shared-here"), OMP_NUM_THREADS="1", **env)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-ra", *args],
                          cwd=ROOT, env=environment, capture_output=True, text=True, timeout=600)


def test_damage_tests_run_their_core_and_skip_the_rest_with_one_line(tmp_path):
    result = _pytest(tmp_path, "tests/data/test_damaged_files.py")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    skip_lines = [line for line in result.stdout.splitlines() if line.startswith("SKIPPED")]
    assert len(skip_lines) == 1 and "no-shared-here" in skip_lines[0], result.stdout[-3000:]
    passed = re.search(r"(\d+) passed", result.stdout)
    assert passed and int(passed.group(1)) >= 5  # the core on generated files ran


def test_ci_makes_a_missing_shared_folder_a_failure(tmp_path):
    result = _pytest(tmp_path, "--collect-only", "tests/test_utils.py", FASTCSI_REQUIRE_SHARED="1")
    assert result.returncode != 0
    assert "FASTCSI_REQUIRE_SHARED=1" in result.stderr and "no-shared-here" in result.stderr
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^export FASTCSI_REQUIRE_SHARED=1$", ci, re.M), "CI must not skip the shared-data tests"
