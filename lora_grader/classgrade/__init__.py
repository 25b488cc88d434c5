"""`lora-grade`: grade a whole class with the isolated grader, and audit nbgrader's scores against it.

grade.py finds the students and grades what changed, outputs.py writes (and merges) what an
instructor reads, audit.py compares with nbgrader's gradebook, class_report.py counts what the
class got wrong and report_page.py shows it on one page, cli.py is the command.
"""
