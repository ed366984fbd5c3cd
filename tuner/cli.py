"""Command line: ``tuner run | worker | status`` (see ``tuner --help``)."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from tuner.config import ConfigError, StudyConfig, load_study
from tuner.lr_range import NoUsableMinimum
from tuner.storage import DEFAULT_STORAGE, StorageError

DEFAULT_STUDY = Path("studies/mnist1d_cnn.toml")
log = logging.getLogger("tuner")


def _storage_arg(value: str | None) -> str:
    return value or os.environ.get("TUNER_STORAGE") or DEFAULT_STORAGE


def summary_table(result) -> str:  # noqa: ANN001 -- tuner.pipeline.Result
    """The end-of-run table: the chosen values and the final test score."""
    d = result.decisions
    final = d["final"]
    rows = [
        ("run", result.run),
        ("storage", result.storage),
        ("LR range (range test)", f"{d['lr_range']['min_lr']:.3g} - {d['lr_range']['max_lr']:.3g}"),
        ("max momentum (cyclical)",
         f"{d['momentum']['max_momentum']:g} -> {d['momentum']['min_momentum']:g}"),
        ("weight decay", f"{d['weight_decay']['weight_decay']:g}"),
        ("batch size", f"{d['batch_size']['batch_size']}"),
        ("LR range at that batch size", f"{result.min_lr:.3g} - {result.max_lr:.3g}"),
        ("final training", f"1cycle, {final['epochs']} epochs, seeds {final['seeds']}"),
        ("test accuracy", f"{100 * final['test_accuracy']:.2f}% "
                          f"± {100 * final['test_accuracy_sd']:.2f}"),
        ("test loss", f"{final['test_loss']:.4f}"),
        ("time per stage", ", ".join(f"{k} {v.get('seconds', 0):.0f}s" for k, v in d.items())),
    ]
    width = max(len(k) for k, _ in rows)
    line = "-" * (width + 2 + max(len(v) for _, v in rows))
    return "\n".join([line, *(f"{k:<{width}}  {v}" for k, v in rows), line])


def cmd_run(args: argparse.Namespace) -> int:
    from tqdm.contrib.logging import logging_redirect_tqdm

    from tuner import workers
    from tuner.pipeline import prepare, run
    from tuner.workers import threads_per_worker

    if args.study is None and not DEFAULT_STUDY.is_file():
        config = StudyConfig()  # every number has a default in the code
    else:
        config = load_study(args.study or DEFAULT_STUDY)
    storage = _storage_arg(args.storage)
    threads = args.threads or (threads_per_worker(args.workers) if args.workers > 1 else 0)
    if args.device or threads:
        config = config.replace(train=dataclasses.replace(
            config.train, device=args.device or config.train.device,
            threads=threads or config.train.threads))
    procs = []
    if args.workers > 1:  # N - 1 helpers join the run; this process is the N-th worker
        run_name = prepare(config, storage, args.run, args.fresh)
        procs = workers.spawn(args.workers - 1, storage, run_name, config.train.threads,
                              args.device, quiet=True)
        args.run, args.fresh = run_name, False
    try:
        with logging_redirect_tqdm():
            result = run(config, storage=storage, run_name=args.run, fresh=args.fresh)
    finally:
        codes = workers.wait(procs)
    if any(codes):
        log.warning("local workers exited with codes %s", codes)
    print(summary_table(result))
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from tqdm.contrib.logging import logging_redirect_tqdm

    from tuner.pipeline import join

    with logging_redirect_tqdm():
        join(_storage_arg(args.storage), args.run, threads=args.threads, device=args.device)
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
    p.add_argument("--workers", type=int, default=1,
                   help="worker processes on this machine sharing the run (default 1)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads per worker; default an equal share of the cores")
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
