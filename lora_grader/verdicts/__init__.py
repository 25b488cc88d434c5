"""The verdicts: judging what a probe sent back, and explaining what is wrong.

Imported by the grader's own process (`pytest autograder`, `lora-grade`) and by nbgrader's test
cells, never by the sandbox that runs student code. One module per notebook, named as in
lora_grader.checks; the expected values they compare against come from verdicts/expected.py.
"""
