"""scripts/services.py as a module, for tests and benchmarks that start a server of their own
the way the local stack does (it is a script, not part of the package)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_PATH = Path(__file__).resolve().parents[1] / "scripts" / "services.py"
_spec = importlib.util.spec_from_file_location("pui_services", _PATH)
services = importlib.util.module_from_spec(_spec)
sys.modules["pui_services"] = services  # dataclasses look their module up there
_spec.loader.exec_module(services)
