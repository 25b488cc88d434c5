"""Every catalogued bug is caught first by the check that names its cause; every correct
variant gets full marks. Graded by `pytest autograder`'s engine, in one sandbox per mode (fork and spawn)."""
import pytest

from catalogue import BUGS, VARIANTS
from lora_grader.grading import MODES


@pytest.fixture(scope="module", params=MODES)
def graded(request, catalogue_grades):
    """{entry name: [CheckResult]} for the entries this run selected (all of them, or `-k`'s),
    graded in each of the sandbox's modes."""
    return catalogue_grades(request.param)


@pytest.mark.parametrize("entry", BUGS, ids=lambda entry: entry.name)
def test_bug_is_caught_by_the_check_that_names_its_cause(entry, graded):
    failed = [result for result in graded[entry.name] if not result.passed]
    assert failed, f"{entry.name} got full marks: no check caught it"
    first = failed[0]
    assert first.check.name == entry.caught_by, (
        f"{entry.name}: the first failure a student reads is {first.check.name} "
        f"({first.message!r}), not {entry.caught_by}"
    )
    assert entry.says.lower() in first.message.lower(), (
        f"{entry.name}: {first.check.name}'s feedback does not say {entry.says!r}:\n{first.message}"
    )
    if entry.fails_only:
        assert [result.check.name for result in failed] == list(entry.fails_only), (
            f"{entry.name}: one mistake, reported by {entry.fails_only}, also failed "
            f"{[result.check.name for result in failed if result.check.name not in entry.fails_only]}"
        )


@pytest.mark.parametrize("entry", VARIANTS, ids=lambda entry: entry.name)
def test_correct_variant_gets_full_marks(entry, graded):
    failed = [f"{result.check.name}: {result.message}" for result in graded[entry.name] if not result.passed]
    assert not failed, f"{entry.name} is correct but lost points:\n" + "\n".join(failed)
