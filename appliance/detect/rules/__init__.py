"""The YAML rule language: parse and validate rules, compile them to polars, correlate, test, explain.

Public entry points: RuleEngine (load, evaluate, flush), validate, run_tests, RuleDiagnostic.
"""

from __future__ import annotations

from appliance.detect.rules.engine import DATA_DIRS, RuleEngine, validate
from appliance.detect.rules.model import RuleDiagnostic
from appliance.detect.rules.testing import run_tests

__all__ = ["DATA_DIRS", "RuleDiagnostic", "RuleEngine", "run_tests", "validate"]
