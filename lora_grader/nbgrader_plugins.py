"""nbgrader, adapted to this course where its defaults mislead an instructor."""
from __future__ import annotations

import copy
import os

from nbgrader.exchange.default.submit import ExchangeSubmit
from nbgrader.preprocessors import ClearHiddenTests, OverwriteCells


class OverwriteChangedCells(OverwriteCells):
    """nbgrader's OverwriteCells, without the warning for a test cell exactly as it was released.

    A released test cell lacks its hidden part, so its checksum never matches the gradebook's
    copy, and nbgrader warned "Attribute 'checksum' for cell ... has changed!" for every test cell
    of every submission. The cell is put back either way; the warning stays for a locked cell that
    a student really changed."""

    def preprocess_cell(self, cell, resources, cell_index):
        self._as_released = self._is_as_released(cell)
        return super().preprocess_cell(cell, resources, cell_index)

    def report_change(self, name, attr, old, new) -> None:
        if attr == "checksum" and self._as_released:
            return
        super().report_change(name, attr, old, new)

    def _is_as_released(self, cell) -> bool:
        grade_id = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")
        if grade_id is None:
            return False
        try:
            source = self.gradebook.find_source_cell(grade_id, self.notebook_id, self.assignment_id)
        except Exception:  # not in the gradebook: nbgrader's own handling says so
            return False
        released = copy.deepcopy(cell)
        released.source = source.source
        ClearHiddenTests(enforce_metadata=False)._remove_hidden_test_region(released)
        return cell.source == released.source



class PrivateSubmit(ExchangeSubmit):
    """nbgrader's submit, leaving the submission writable by its author only.

    nbgrader makes each submission folder in the exchange's inbound/ 0777 "so the instructor can
    delete later", hidden only by the random part of its name: whoever learns the name (a shared
    screen, a log) could delete or replace another student's notebooks. The instructor collects by
    reading, which 0755 allows."""

    def copy_files(self):
        super().copy_files()
        os.chmod(os.path.join(self.inbound_path, self.assignment_filename), 0o755)
