"""Let ``pytest plugins/gnorm-plugin-grokgap/tests`` import the package from its source folder."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
