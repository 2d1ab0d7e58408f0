"""One module per chapter: EXERCISES maps each exercise (its solution cell's grade_id) to its
check, the solution the notebook exports, and plausible wrong answers with a fragment of the
message the check must give for each. tests/test_checks.py runs them all."""
