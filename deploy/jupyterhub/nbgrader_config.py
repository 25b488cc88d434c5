"""nbgrader for every user of the course hub; install.sh puts it in both installs' etc/jupyter/.

The instructor's course folder has its own nbgrader_config.py (the repository's), read after this
one: it reads the exchange from LORA_EXCHANGE too, so both sides meet in the same folder.
"""
import os

c = get_config()  # noqa: F821 (provided by nbgrader)

c.CourseDirectory.course_id = os.environ.get("LORA_COURSE_ID", "lora-course")
c.Exchange.root = os.environ.get("LORA_EXCHANGE", "/srv/nbgrader/exchange")
# Assignments are fetched into ~/course/<assignment>, beside ~/autograder and ~/pytest.ini, the
# bundle's layout: `pytest autograder` in the home folder checks them, as in the bundle.
c.Exchange.assignment_dir = os.path.join(os.path.expanduser("~"), "course")
# nbgrader leaves each submission writable by every user (0777), hidden only by its name;
# this keeps it its author's.
c.ExchangeFactory.submit = "lora_grader.nbgrader_plugins.PrivateSubmit"
