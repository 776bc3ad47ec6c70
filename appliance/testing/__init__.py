"""Test factories shared by the project's tests, rules and plug-ins."""
