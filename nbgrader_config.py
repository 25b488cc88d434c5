"""nbgrader, configured for this course. Run every nbgrader command from this folder."""
import os

from nbconvert.preprocessors import CSSHTMLHeaderPreprocessor
from nbgrader.preprocessors import CheckCellMetadata, ClearHiddenTests, ClearOutput, DeduplicateIds, GetGrades
from nbgrader.preprocessors import OverwriteKernelspec

from lora_grader.nbgrader_plugins import OverwriteChangedCells

c = get_config()  # noqa: F821 (provided by nbgrader)

# Our folders: solutions/ holds the instructor's notebooks, course/ the released ones.
c.CourseDirectory.source_directory = "solutions"
c.CourseDirectory.release_directory = "course"

# Files a student submits beside the notebooks are not copied for grading: a torch.py or
# lora_grader.py there would shadow the real module when the tests import it.
c.CourseDirectory.ignore = [".ipynb_checkpoints", "*.pyc", "__pycache__", "feedback", "*.py", "*.so", "*.pth"]

# Every notebook runs in the course's Python kernel; one cell may take at most a minute
# (nbgrader interrupts it then, and the cell's tests fail).
c.Execute.kernel_name = "python3"
c.Execute.timeout = 60

# A test cell scores zero when it has any stderr output. Warnings a correct answer emits
# (a deprecation in a library, a UserWarning) must not cost points: the tests fail by raising.
c.IgnorePattern.pattern = r"[\s\S]*"
c.IgnorePattern.enabled = True  # off by default in nbgrader 0.9: the pattern alone does nothing

# A test cell a student deleted is put back and graded. Test cells come back as the gradebook has
# them, with no warning for a released cell's missing hidden part (lora_grader/nbgrader_plugins.py).
c.OverwriteCells.add_missing_cells = True
c.Autograde.sanitize_preprocessors = [ClearOutput, DeduplicateIds, OverwriteKernelspec, OverwriteChangedCells,
                                      CheckCellMetadata]

# Feedback shows a test cell as the student saw it: the hidden cases' source stays with the instructor.
c.GenerateFeedback.preprocessors = [GetGrades, CSSHTMLHeaderPreprocessor, ClearHiddenTests]

# nbgrader's exchange (`nbgrader release_assignment`, `collect`) lives in the course folder by
# default, so the Formgrader finds it. On a shared JupyterHub every user meets in one folder, which
# the hub names in LORA_EXCHANGE (deploy/jupyterhub/): this file is read last, so it must not
# override it.
if os.environ.get("LORA_EXCHANGE"):
    c.Exchange.root = os.environ["LORA_EXCHANGE"]
else:
    c.Exchange.root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "exchange")
    os.makedirs(c.Exchange.root, exist_ok=True)
