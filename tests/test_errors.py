"""One-line error summaries for errors that arrive from Ray workers as text only."""

from __future__ import annotations

from clam_dist.data.errors import DataError
from clam_dist.errors import InputError, JobError, exit_code, root_cause, summary_line

REMOTE = (
    "\x1b[36mray::MapWorker(MapBatches(_read_files)->MapBatches(ClusterAssigner)).submit()"
    "\x1b[39m (pid=1, ip=192.0.2.2)\n"
    "Traceback (most recent call last):\n"
    '  File "x.py", line 3, in f\n'
    "    raise ValueError(...)\n"
    "{inner}\n"
    "\n"
    "The above exception was the direct cause of the following exception:\n"
    "\n"
    "ray.exceptions.UserCodeException: \x1b[36mray::MapWorker\x1b[39m failed\n"
)


class RemoteText(Exception):
    """Stands in for a RayTaskError whose original exception object did not survive."""


def test_a_remote_foreign_error_is_summarised_by_its_own_line():
    exc = RemoteText(REMOTE.format(inner="ValueError: input has shape (10000,), expected (n, 6)"))
    assert summary_line(exc) == "ValueError: input has shape (10000,), expected (n, 6)"


def test_a_remote_error_of_ours_wins_over_later_wrappers():
    inner = "clam_dist.data.errors.DataError: a.parquet: column 'x' has width 4, b.parquet 6"
    line = summary_line(RemoteText(REMOTE.format(inner=inner)))
    assert line == "DataError: a.parquet: column 'x' has width 4, b.parquet 6"


def test_ray_wrappers_alone_fall_back_to_the_first_line_without_colour_codes():
    exc = RemoteText("\x1b[36mray::Task\x1b[39m died\nray.exceptions.RayTaskError: boom")
    assert summary_line(exc) == "RemoteText: ray::Task died"


def test_the_root_cause_of_a_chain_is_ours_and_decides_the_exit_code():
    try:
        try:
            raise DataError("f.parquet: 3 rows with NaN")
        except DataError as inner:
            raise RuntimeError("wrapper") from inner
    except RuntimeError as outer:
        assert isinstance(root_cause(outer), DataError)
        assert exit_code(outer) == 2
        assert summary_line(outer) == "DataError: f.parquet: 3 rows with NaN"
    assert exit_code(JobError("failed")) == 1 and exit_code(InputError("bad")) == 2
    assert exit_code(RuntimeError("x")) == 1
