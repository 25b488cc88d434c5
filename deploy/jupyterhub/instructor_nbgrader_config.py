"""The instructor's ~/.jupyter/nbgrader_config.py (add-user.sh writes it): the Formgrader and the
Assignments tab of the instructor's server find the course folder, whose own nbgrader_config.py
holds the course's grading settings."""
import os

c = get_config()  # noqa: F821 (provided by nbgrader)

c.CourseDirectory.root = os.path.join(os.path.expanduser("~"), "lora-course")
