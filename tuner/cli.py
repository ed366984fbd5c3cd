"""Command line: ``tuner run | worker | status | report | dashboard`` (see ``tuner --help``)."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from tuner.config import ConfigError, StudyConfig, load_study
from tuner.lr_range import NoUsableMinimum
from tuner.stages import STAGES
from tuner.storage import DEFAULT_STORAGE, StorageError

if TYPE_CHECKING:
    from tuner.pipeline import Result

DEFAULT_STUDY = Path("studies/mnist1d_cnn.toml")
log = logging.getLogger("tuner")


def _storage_arg(value: str | None) -> str:
    return value or os.environ.get("TUNER_STORAGE") or DEFAULT_STORAGE


def summary_table(result: Result, report: str | None = None) -> str:
    """The end-of-run table: each stage's decision in a few words, the final values, the time
    each stage took and where the report is."""
    v, final = result.values, result.final
    rows = [("run", result.run), ("storage", result.storage)]
    rows += [(stage.title, result.decisions[stage.name].summary()) for stage in STAGES
             if stage.name in result.decisions]
    rows += [
        ("final values", f"LR {v.min_lr:.3g} - {v.max_lr:.3g}, momentum {v.max_momentum:g} -> "
                         f"{v.min_momentum:g}, weight decay {v.weight_decay:g}, batch size "
                         f"{v.batch_size}; 1cycle, {final.epochs} epochs, seeds {final.seeds}"),
        ("time per stage", ", ".join(f"{k} {d.seconds:.0f}s" for k, d in
                                     result.decisions.items())),
    ]
    if report:
        rows.append(("report", report))
    width = max(len(k) for k, _ in rows)
    line = "-" * (width + 2 + max(len(v) for _, v in rows))
    return "\n".join([line, *(f"{k:<{width}}  {v}" for k, v in rows), line])


def cmd_run(args: argparse.Namespace) -> int:
    from tqdm.contrib.logging import logging_redirect_tqdm

    from tuner import workers
    from tuner.context import load_workload
    from tuner.dashboard import annotate_stage
    from tuner.pipeline import budgeted_config, prepare, run
    from tuner.references import check_references
    from tuner.workers import threads_per_worker

    if args.study is None and not DEFAULT_STUDY.is_file():
        config = StudyConfig()  # every number has a default in the code
    else:
        config = load_study(args.study or DEFAULT_STUDY)
    check_references(config)
    storage = _storage_arg(args.storage)
    threads = args.threads or (threads_per_worker(args.workers) if args.workers > 1 else 0)
    if args.device or threads:
        config = config.replace(train=dataclasses.replace(
            config.train, device=args.device or config.train.device,
            threads=threads or config.train.threads))
    workload = load_workload(config)  # read once, before the storage is touched
    if args.budget is not None:
        config = budgeted_config(config, args.budget, storage=storage, run_name=args.run,
                                 fresh=args.fresh, workload=workload)
    procs = []
    if args.workers > 1:  # N - 1 helpers join the run; this process is the N-th worker
        run_name = prepare(config, storage, args.run, args.fresh)
        procs = workers.spawn(args.workers - 1, storage, run_name, config.train.threads,
                              args.device, quiet=True)
        args.run, args.fresh = run_name, False
    try:
        with logging_redirect_tqdm():
            result = run(config, storage=storage, run_name=args.run, fresh=args.fresh,
                         workload=workload, on_decided=annotate_stage)
    finally:
        codes = workers.wait(procs)
    if any(codes):
        log.warning("local workers exited with codes %s", codes)
    print(summary_table(result, report=_end_of_run_report(storage, result.run, args.report)))
    return 0


def _end_of_run_report(storage: str, run: str, path: Path | None) -> str:
    """Write the run's report; where it is, or why not (a report never fails a run)."""
    from tuner.report import write_report

    try:
        return str(write_report(storage, run, path))
    except Exception as exc:  # noqa: BLE001
        log.warning("could not write the report (%s: %s); try `tuner report --run %s`",
                    type(exc).__name__, exc, run)
        return "not written (see the warning above)"


def cmd_report(args: argparse.Namespace) -> int:
    from tuner.report import write_report
    from tuner.storage import Run
    from tuner.tables import write_csv

    handle = Run.find(_storage_arg(args.storage), args.run)
    path = write_report(handle, path=args.output)
    print(f"report of run {handle.name!r}: {path} ({path.stat().st_size / 1e6:.1f} MB)")
    if args.csv is not None:
        for table in write_csv(handle, None, args.csv):
            print(f"table: {table}")
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    from tuner.dashboard import dashboard_url, make_dashboard_server
    from tuner.storage import mask_url

    storage = _storage_arg(args.storage)
    try:
        server = make_dashboard_server(storage, args.host, args.port, args.artifact_dir)
    except OSError as exc:
        print(f"tuner: error: cannot serve on {args.host}:{args.port}: {exc.strerror or exc}",
              file=sys.stderr)
        return 2
    print(f"optuna-dashboard on {mask_url(storage)}: {dashboard_url(server)} "
          f"(Ctrl-C stops it)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from tqdm.contrib.logging import logging_redirect_tqdm

    from tuner.dashboard import annotate_stage
    from tuner.pipeline import join

    with logging_redirect_tqdm():
        join(_storage_arg(args.storage), args.run, threads=args.threads, device=args.device,
             on_decided=annotate_stage)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from tuner.status import status_table

    table = status_table(_storage_arg(args.storage), args.run)
    print(table.to_string(index=False) if len(table) else "no runs in this storage")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tuner", description=__doc__)
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="run or resume the staged auto-tune")
    p.add_argument("study", nargs="?", type=Path,
                   help=f"study file (TOML); default {DEFAULT_STUDY}")
    p.add_argument("--storage", help=f"database URL; default $TUNER_STORAGE or {DEFAULT_STORAGE}")
    p.add_argument("--run", help="run name; default the study's name. The same name resumes")
    p.add_argument("--fresh", action="store_true",
                   help="start over under a new run name instead of resuming")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), help="override train.device")
    p.add_argument("--budget", type=float, metavar="SECONDS",
                   help="fit a new run to this many tuning seconds on this machine (stages 1-4 "
                        "cut down as needed, the refinement in what they leave)")
    p.add_argument("--workers", type=int, default=1,
                   help="worker processes on this machine sharing the run (default 1)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads per worker; default an equal share of the cores")
    p.add_argument("--report", type=Path, metavar="PATH",
                   help="where to write the run's HTML report; default reports/RUN.html beside "
                        "a SQLite file, else under the working directory")
    p.set_defaults(func=cmd_run)

    w = sub.add_parser("worker", help="join a run as one more worker (any machine)")
    w.add_argument("--storage", help=f"database URL; default $TUNER_STORAGE or {DEFAULT_STORAGE}")
    w.add_argument("--run", help="the run to join; default the newest in the storage")
    w.add_argument("--threads", type=int, default=0, help="torch CPU threads for this worker")
    w.add_argument("--device", choices=("auto", "cpu", "cuda"), help="override train.device")
    w.set_defaults(func=cmd_worker)

    st = sub.add_parser("status", help="runs, their stages, trials and decisions, as a table")
    st.add_argument("--storage", help=f"database URL; default $TUNER_STORAGE or {DEFAULT_STORAGE}")
    st.add_argument("--run", help="only this run")
    st.set_defaults(func=cmd_status)

    r = sub.add_parser("report", help="one self-contained HTML file with every stage's plots")
    r.add_argument("--storage", help=f"database URL; default $TUNER_STORAGE or {DEFAULT_STORAGE}")
    r.add_argument("--run", help="the run to report; default the newest in the storage")
    r.add_argument("-o", "--output", type=Path, metavar="PATH",
                   help="the HTML file; default reports/RUN.html beside a SQLite file, else "
                        "under the working directory")
    r.add_argument("--csv", type=Path, metavar="DIR",
                   help="also write every trial of every stage as CSV tables under DIR")
    r.set_defaults(func=cmd_report)

    d = sub.add_parser("dashboard", help="optuna-dashboard on the storage, with each stage's "
                                         "decision as a note")
    d.add_argument("--storage", help=f"database URL; default $TUNER_STORAGE or {DEFAULT_STORAGE}")
    d.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only)")
    d.add_argument("--port", type=int, default=8080, help="port (default 8080; 0: any free one)")
    d.add_argument("--artifact-dir", type=Path, metavar="DIR",
                   help="artifact store (the range test image); default artifacts/ beside a "
                        "SQLite file, else under the working directory")
    d.set_defaults(func=cmd_dashboard)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(message)s", stream=sys.stderr)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        return args.func(args)
    except (ConfigError, StorageError, NoUsableMinimum) as exc:
        print(f"tuner: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tuner: interrupted; run the same command again to resume.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
