"""Every catalogued bug is caught first by the check that names its cause; every correct
variant gets full marks. Graded by `pytest autograder`'s engine in both sandbox modes: fork mode
from the recorded catalogue (tests/recorded.py: the quick loop judges it in seconds), spawn mode
in a sandbox of its own (slow)."""
import pytest

from catalogue import BUGS, ENTRIES, VARIANTS


@pytest.fixture(scope="module", params=["fork", pytest.param("spawn", marks=pytest.mark.slow)])
def graded(request, catalogue_grades):
    """{entry name: [CheckResult]} for the entries this run selected (all of them, or `-k`'s)."""
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


@pytest.mark.slow
@pytest.mark.parametrize("entry", ENTRIES, ids=lambda entry: entry.name)
def test_a_fresh_sandbox_gives_the_recorded_verdicts(entry, catalogue_grades):
    """Spawn mode, graded now, against fork mode's recording: the two modes agree on every
    message, and a recording reused from the cache is not stale."""
    fresh = [(r.check.name, r.message) for r in catalogue_grades("spawn")[entry.name]]
    recorded = [(r.check.name, r.message) for r in catalogue_grades("fork")[entry.name]]
    assert fresh == recorded, (
        f"{entry.name}: a sandbox now says {fresh}, the recording says {recorded}. If a probe, a case "
        "or the entry changed, delete tests/.recorded/ and run the tests again to record afresh."
    )
