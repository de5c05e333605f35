"""Repository rules CI enforces: lint clean, and no source file too long to read in one sitting."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 450


def test_ruff_clean():
    out = subprocess.run([sys.executable, "-m", "ruff", "check", "src", "tests", "benchmarks", "examples"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr


def test_source_files_short():
    long = {str(p.relative_to(ROOT)): n for p in (ROOT / "src").rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"split these files by responsibility (limit {MAX_LINES} lines): {long}"


def test_library_never_imports_cli():
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "src" / "lorakit").rglob("*.py")
                 if "cli" not in p.relative_to(ROOT / "src" / "lorakit").parts[:1] and p.name != "__main__.py"
                 and ("from .cli" in p.read_text() or "lorakit.cli" in p.read_text())]
    assert not offenders, f"the library must not import the CLI: {offenders}"
