"""How much faster do N local workers (default 2) finish the momentum + weight-decay stages than 1?

Runs the MNIST-1D study twice in this one script, with ``tuner run --workers 1 --threads 1``
and ``tuner run --workers N --threads 1``, each into its own fresh SQLite file, and measures
from the storage the wall-clock span of the two stages: from the first momentum trial's start
to the last weight-decay trial's end. Pruning is switched off so that both runs train the same
trials; the batch-size and final stages are cut to the minimum (they are not measured).

    .venv/bin/python bench/workers_speedup.py [--epochs 20] [--workers 2] [--storage-dir /tmp]

Run it on an otherwise idle machine with at least N cores. The workers train on the device
``tuner run`` picks (``train.device = "auto"``: a GPU where there is one, shared by all N).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna

STUDY = """
name = "speedup"
[momentum]
epochs = {epochs}
[weight_decay]
epochs = {epochs}
[pruner]
warmup_fraction = 1.0
[batch_size]
values = [128]
budget_s = 0.5
range_test_iters = 300
[final]
epochs = 1
seeds = [0]
"""


def stage_span(url: str, run: str) -> tuple[float, int]:
    """Seconds from the first momentum trial's start to the last weight-decay trial's end."""
    trials = []
    for stage in ("momentum", "weight_decay"):
        study = optuna.load_study(study_name=f"{run}/{stage}", storage=url)
        trials += study.get_trials(states=(optuna.trial.TrialState.COMPLETE,
                                           optuna.trial.TrialState.PRUNED))
    start = min(t.datetime_start for t in trials)
    end = max(t.datetime_complete for t in trials)
    return (end - start).total_seconds(), len(trials)


BURN = "import time\nt = time.perf_counter()\nx = 0\nfor i in range(20_000_000): x += i\n" \
       "print(time.perf_counter() - t)"


def machine_parallelism(n: int = 2) -> float:
    """How many cores' worth of work ``n`` CPU-bound processes get done at once (2.0 for two
    independent cores; about 1.0 when the two 'cores' share one)."""
    def burn(k: int) -> float:
        procs = [subprocess.Popen([sys.executable, "-c", BURN], stdout=subprocess.PIPE,
                                  text=True) for _ in range(k)]
        return max(float(p.communicate()[0]) for p in procs)
    return n * burn(1) / burn(n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20, help="epochs per momentum/WD trial")
    parser.add_argument("--workers", type=int, default=2,
                        help="workers to compare with one (default 2)")
    parser.add_argument("--storage-dir", default=None)
    args = parser.parse_args()
    if args.workers < 2:
        parser.error(f"--workers must be >= 2, but got {args.workers}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    folder = Path(args.storage_dir or tempfile.mkdtemp(prefix="tuner-speedup-"))
    study_file = folder / "speedup.toml"
    study_file.write_text(STUDY.format(epochs=args.epochs))

    spans = {}
    for workers in (1, args.workers):
        url = f"sqlite:///{folder}/workers{workers}-{time.time_ns()}.db"
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "tuner.cli", "-q", "run", str(study_file),
                        "--storage", url, "--workers", str(workers), "--threads", "1"],
                       check=True, stdout=subprocess.DEVNULL)
        spans[workers], n = stage_span(url, "speedup")
        print(f"{workers} worker(s), 1 thread each: momentum + weight decay took "
              f"{spans[workers]:.1f} s for {n} trials (whole run {time.perf_counter() - t0:.0f} s)",
              flush=True)
    n = args.workers
    print(f"speed-up of {n} workers over 1: {spans[1] / spans[n]:.2f}x")
    print(f"this machine's parallelism: {n} CPU-bound processes ran at "
          f"{machine_parallelism(n):.2f}x the work of one (the ceiling for any speed-up)")


if __name__ == "__main__":
    main()
