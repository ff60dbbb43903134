"""What ``gnorm run`` imports in the coordinator: a file without ``[[analysis]]`` tables writes no report,
so it never imports the report writer or matplotlib (about a second of every small study's start-up
and exit)."""

from __future__ import annotations

import subprocess
import sys

from builders import FREE, write_study


def test_a_run_without_analyses_imports_neither_the_report_writer_nor_matplotlib(tmp_path):
    path = write_study(tmp_path, experiment={"seeds": 1}, training={"max_steps": 20}, stages=[FREE])
    code = ("import sys; from gnorm.cli import main\n"
            f"try: main(['run', {str(path)!r}, '--out', {str(tmp_path / 'out')!r}, '--executor', 'serial'])\n"
            "except SystemExit as done: assert not done.code, done.code\n"
            "print(sorted(m for m in ('gnorm.report', 'matplotlib') if m in sys.modules))")
    finished = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert finished.stdout.strip().splitlines()[-1] == "[]"
    assert (tmp_path / "out").is_dir()  # it did run: the store was written
