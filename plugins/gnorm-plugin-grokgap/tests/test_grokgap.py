"""The grokgap analyzer measures T_grok - T_mem per cell and its section carries the table and figure."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

from gnorm.components import RunRecord


def _plugin_module():
    """The package's module, installed or read from its source folder (which stays off sys.path, so that
    a build's metadata there does not register the analyzer in every registry of the test session)."""
    if "gnorm_plugin_grokgap" not in sys.modules and importlib.util.find_spec("gnorm_plugin_grokgap") is None:
        source = Path(__file__).resolve().parents[1] / "gnorm_plugin_grokgap" / "__init__.py"
        spec = importlib.util.spec_from_file_location("gnorm_plugin_grokgap", source)
        module = importlib.util.module_from_spec(spec)
        sys.modules["gnorm_plugin_grokgap"] = module
        spec.loader.exec_module(module)
    return importlib.import_module("gnorm_plugin_grokgap")


grokgap = _plugin_module()
GrokGapConfig, grokgap_analyzer, grokgap_section = grokgap.GrokGapConfig, grokgap.grokgap_analyzer, grokgap.grokgap_section


def _record(seed: int, t_mem: int | None, t_grok: int | None, rho: float = 1.0) -> RunRecord:
    return RunRecord(run_id=f"r{rho}-{seed}", stage="clamp", cell={"controller.rho": rho}, seed=seed,
                     config={"controller": {"name": "clamp", "rho": rho}}, t_mem=t_mem, t_grok=t_grok,
                     norm_at_grok=None if t_grok is None else 50.0, budget=10_000)


def test_the_gap_is_the_median_over_seeds_that_grokked_and_censored_seeds_are_counted():
    records = [_record(0, 100, 1100), _record(1, 200, 2200), _record(2, 100, 3100), _record(3, 100, None)]
    analysis = grokgap_analyzer(GrokGapConfig())(records)
    (cell,) = analysis.numbers["cells"]
    assert cell["gaps"] == [1000, 2000, 3000] and cell["median_gap"] == 2000.0
    assert analysis.tables[0].rows[0][2] == "3/4"
    assert analysis.notes == ["clamp rho=1.0: 1 seeds without a gap (censored or no T_mem)"]


def test_the_section_shows_the_table_and_one_figure_and_is_absent_without_gaps():
    records = [_record(0, 100, 1100, rho) for rho in (0.9, 1.1)]
    section = grokgap_section(GrokGapConfig(), grokgap_analyzer(GrokGapConfig())(records), None)
    assert section.title == "Grokking gap" and [f.name for f in section.figures] == ["grokgap"]
    assert section.figures[0].figure.axes[0].get_yscale() == "log"
    censored = [_record(0, 100, None)]
    assert grokgap_section(GrokGapConfig(), grokgap_analyzer(GrokGapConfig())(censored), None) is None
