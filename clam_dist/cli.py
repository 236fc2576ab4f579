"""`clam-dist` command line: one subcommand per stage, each defined in its own module.

Each command module exposes ``add_arguments(parser)`` and ``run(args) -> int`` (the exit
code). The registry below maps names to modules, imported only when that command runs, so
`clam-dist --help` stays fast and a broken optional stage cannot break the others.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys

# name -> (module, one-line help)
_REGISTRY: dict[str, tuple[str, str]] = {
    "demo": (
        "clam_dist.commands.demo",
        "cluster a bundled data set with ClAM and k-means, print metrics",
    ),
    "quality": ("clam_dist.commands.quality", "ClAM vs k-means on the seven ClAM-paper data sets"),
    "make-dataset": (
        "clam_dist.commands.make_dataset",
        "write sharded Parquet (Gaussian mixture or paper data)",
    ),
    "train": ("clam_dist.train.command", "distributed training with Ray Train"),
    "assign": ("clam_dist.assign.command", "assign every row to a cluster with Ray Data"),
    "evaluate": ("clam_dist.evaluate.command", "metrics and an HTML/PNG report for assignments"),
    "pipeline": (
        "clam_dist.pipeline.command",
        "make/read data -> train -> assign -> evaluate -> report",
    ),
    "tune": ("clam_dist.tune.command", "hyper-parameter search with Ray Tune"),
    "inspect": ("clam_dist.commands.inspect", "show a model, pipeline run or assignment output"),
    "run-partition": (
        "clam_dist.registry.partition_command",
        "one scheduled partition: assign with the champion, refresh on drift, gate, promote",
    ),
    "models": (
        "clam_dist.registry.models_command",
        "a model registry's versions and aliases: list, show, promote, rollback",
    ),
    "report": (
        "clam_dist.registry.report_command",
        "a registered model's timeline across partitions (drift, sizes, champions)",
    ),
}


def _installed(module_name: str) -> bool:
    try:
        return importlib.util.find_spec(module_name) is not None
    except ModuleNotFoundError:  # parent package absent
        return False


# Only commands whose module exists are offered (a module that exists but fails to import
# still shows up, and fails loudly when used).
COMMANDS = {name: spec for name, spec in _REGISTRY.items() if _installed(spec[0])}


class OneLineParser(argparse.ArgumentParser):
    """argparse's usage errors as ONE line (argparse prints the whole usage block first),
    pointing at --help; exit code 2 as for every input error. Subcommand parsers are made
    of the same class (argparse's default for add_subparsers)."""

    def error(self, message: str):  # type: ignore[override]
        print(f"{self.prog}: error: {message} (see: {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="clam-dist",
        description="Distributed clustering with Associative Memories (ClAM, DCAM, attention, k-means).",
    )
    # Accepted anywhere on the line (main() takes them out before the command's parser).
    parser.add_argument("-v", "--verbose", action="store_true", help="tracebacks, Ray's logs")
    parser.add_argument("-V", "--version", action="store_true", help="print the version")
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default="text",
        help="json: also write the JSON-line event records to stderr",
    )
    parser.add_argument(
        "--log-file", metavar="PATH", help="append the JSON-line event records to PATH"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        if only is None or only == name:
            # Only the chosen command's module is imported (its options may need heavy deps).
            importlib.import_module(module_name).add_arguments(cmd)
        cmd.set_defaults(_module=module_name)
    return parser


LOG_FORMATS = ("text", "json")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("clam-dist")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


def _pop_option(argv: list[str], name: str) -> str | None:
    """Remove ``name VALUE`` / ``name=VALUE`` from ``argv`` (the last one wins)."""
    value = None
    i = 0
    while i < len(argv):
        if argv[i] == name and i + 1 < len(argv):
            value = argv[i + 1]
            del argv[i : i + 2]
        elif argv[i].startswith(name + "="):
            value = argv[i].split("=", 1)[1]
            del argv[i]
        else:
            i += 1
    return value


def main(argv: list[str] | None = None) -> int:
    # A program's own process (the console script, `python -m clam_dist`), not a caller's
    # that passes argv: only then may the exit path touch file descriptors 1 and 2.
    called_as_program = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["--version"], ["-V"]):
        print(f"clam-dist {_version()}")
        return 0
    # -v/--verbose anywhere: tracebacks on errors, Ray's own INFO logs.
    verbose = any(a in ("-v", "--verbose") for a in argv)
    argv = [a for a in argv if a not in ("-v", "--verbose")]
    # --log-format / --log-file anywhere too: they route clam_dist.logs' records.
    log_format = _pop_option(argv, "--log-format") or "text"
    log_file = _pop_option(argv, "--log-file")
    if log_format not in LOG_FORMATS:
        print(f"clam-dist: --log-format must be one of {', '.join(LOG_FORMATS)}", file=sys.stderr)
        return 2
    chosen = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(only=chosen if chosen in COMMANDS else "__none__")
    try:  # a usage error returns its exit code (2), as every failure of main() does
        args = parser.parse_args(argv)
        if not getattr(args, "command", None):
            parser.error(f"a command is required, one of: {', '.join(COMMANDS)}")
    except SystemExit as exc:
        if exc.code in (0, None):  # --help: argparse's own clean exit
            raise
        return exc.code if isinstance(exc.code, int) else 2
    code = run_logged(
        args.command,
        lambda: importlib.import_module(args._module).run(args),
        verbose,
        log_format=log_format,
        log_file=log_file,
    )
    from clam_dist import interrupts

    if called_as_program and not verbose and interrupts.received() is not None:
        _last_word()
    return code


def _last_word() -> None:
    """After an interrupt's one line, nothing more reaches the terminal. The command's
    clean-up has run; what runs at exit (Ray's shutdown) can still wake a library thread
    that was in flight, and Ray Data's executor then connects to RAY_ADDRESS again, which
    printed Ray's "Connecting to existing Ray cluster" lines after ours (seen under load).
    Ray's own logs keep everything."""
    sys.stdout.flush()
    sys.stderr.flush()
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    os.close(devnull)


def run_logged(
    command: str,
    fn,
    verbose: bool = False,
    log_format: str = "text",
    log_file: str | None = None,
) -> int:
    """Run a command with structured start/end records (JSON lines, see clam_dist.logs:
    to the command's event file, and to stderr only for ``log_format="json"``): exit code,
    wall seconds, and the error of a failure.

    A failure is ONE line on stderr naming the problem (clam_dist.errors.describe) and an
    exit code that means something (1 the job failed, 2 bad input or config found before
    any work); the traceback only with -v. The command line itself is not logged: --set
    values may carry credentials."""
    from clam_dist.logs import job_sinks

    with job_sinks(log_format=log_format, log_file=log_file):
        return _run_logged(command, fn, verbose)


def _run_logged(command: str, fn, verbose: bool) -> int:
    import time
    import traceback

    from clam_dist import interrupts
    from clam_dist.errors import describe, exit_code
    from clam_dist.logs import log_event, set_job, set_verbose

    set_job(command)
    set_verbose(verbose)
    # Ctrl-C and SIGTERM: clean up, then one line and 130/143 (clam_dist.interrupts).
    interrupts.reset()
    interrupts.catch_signals()
    log_event("job_start")
    t0 = time.perf_counter()
    error = None
    try:
        code = int(fn() or 0)
    except (Exception, KeyboardInterrupt) as exc:
        code, error = exit_code(exc), describe(command, exc)
        if verbose:
            traceback.print_exc()
            details = getattr(exc, "details", None)
            if details:
                print(details, file=sys.stderr)
    signum = interrupts.received()
    if signum is not None:
        # Whatever a library made of the KeyboardInterrupt (Ray Train wraps it), the
        # person asked the job to stop: say that, with the shell's exit code.
        code, error = interrupts.exit_code(signum), interrupts.describe(command, signum)
    if error:
        print(error, file=sys.stderr)
    log_event(
        "job_done",
        level="info" if code == 0 else "error",
        exit_code=code,
        seconds=round(time.perf_counter() - t0, 3),
        **({"error": error} if error else {}),
    )
    return code


if __name__ == "__main__":
    sys.exit(main())
