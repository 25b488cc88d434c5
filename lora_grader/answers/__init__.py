"""What each check expects: the code that computes an answer, in the instructor's install only.

Every function here takes a case (plain data) and returns the plain data its verdict compares
against. Neither the sandbox nor the student bundle's wheel holds this package: the sandbox runs
probes only, and the wheel ships the visible cases' expected values as data (verdicts/expected.py),
so forging a result costs at least as much as answering.
"""
