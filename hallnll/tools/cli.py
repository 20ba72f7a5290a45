"""``hallnll`` command line (also ``python -m hallnll``).

    hallnll quickstart [--out DIR] [--figures DIR]   # the embedded default: digits, 40% C-based noise, 4 variants
    hallnll train PARAMS.yaml [--set k=v ...] --out DIR [--seeds N] [--parallel N] [--executor slurm ...]
    hallnll fit-folder TRAIN.csv [--test TEST.csv] --out DIR [--set k=v ...]   # label_issues.csv
    hallnll noise [PARAMS.yaml] [--set k=v ...] --out labels.csv
    hallnll reproduce TABLE [--scale quick|paper] [--seeds N] [--parallel N] [--list] [--cells NAME,...] [--executor slurm ...]
    hallnll bench [--params P] [--set k=v ...] [--epochs N] [--json FILE] [--parallel N] [--levers [NAMES]]
    hallnll fidelity [--params P] [--set k=v ...] [--seeds N] [--parallel N] [--out DIR]

Errors in the input (output location first, then config, data, labels) print
one line ``error: ...`` and exit with status 2 before anything is written;
Ctrl-C prints "interrupted — run the same command to resume" (status 130).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..config import ConfigError, load_config
from .text import table

QUICKSTART_PARAMS = "digits-quick"  # the shipped params/digits-quick.yaml
#: the quick start's schedule: half of digits-quick's 60 epochs (the same 10 warm-up, the decay
#: at 3/4 as there), so that a first command ends in about 2 minutes on 2 cores; its table still
#: shows cross-entropy memorising the noise while the selection variants do not
QUICKSTART_SCHEDULE = ("epochs=30", "lr_decay_epoch=22")


def _input_errors():
    from ..data import DataError
    from ..noise import NoiseError
    from ..lock import OutputError
    from ..train import CheckpointError

    return ConfigError, DataError, NoiseError, CheckpointError, OutputError


def _counts(args) -> None:
    """``--seeds`` / ``--parallel`` are positive counts."""
    for name in ("seeds", "parallel"):
        v = getattr(args, name, None)
        if v is not None and v < 1:
            raise ConfigError(f"--{name} {v}: give a whole number of at least 1")


def _fmt(x, pct=True):
    if x is None:
        return "-"
    return f"{100 * x:.2f}" if pct else f"{x:.1f}"


def cmd_train(args) -> int:
    from ..lock import check_output
    from ..train import fit

    out = check_output(args.out)
    _counts(args)
    cfg = load_config(args.params, args.set)
    slurm = slurm_options(args)
    if args.warm_start and (args.seeds > 1 or args.parallel > 1 or slurm is not None):
        raise ConfigError("--warm-start is for one run (its checkpoint is one seed's warm-up); drop --seeds, "
                          "--parallel and --executor")
    if args.seeds > 1 or args.parallel > 1 or slurm is not None:
        from .jobs import run_seeds

        summaries = run_seeds(args.params, args.set, out, seeds=args.seeds, parallel=args.parallel,
                              resume=not args.no_resume, slurm=slurm)
        rows = [[s.get("seed"), _fmt(s.get("best_acc")), _fmt(s.get("last_acc")), s.get("epochs"),
                 _fmt(s.get("wall_seconds"), False)] for s in summaries]
        print(table(rows, ["seed", "best %", "last %", "epochs", "seconds"]))
        for s in summaries:
            if "error" in s:
                print(f"seed {s['seed']}: {'queued' if s.get('pending') else 'FAILED'}: {s['error']}"
                      + (f"\n  log: {s['log']}" if s.get("log") else ""))
        return 1 if any("error" in s and not s.get("pending") for s in summaries) else 0
    res = fit(cfg, out, resume=not args.no_resume, warm_start=args.warm_start)
    from ..distributed import is_main

    if not is_main():  # under torchrun rank 0 reports
        return 0
    s = res.summary
    print(table([[cfg.variant, _fmt(s["best_acc"]), _fmt(s["last_acc"]), s["epochs"], _fmt(s["wall_seconds"], False)]],
                 ["variant", "best %", "last %", "epochs", "seconds"]))
    if res.finished_before:
        print(f"finished already: the results are in {out}/ (summary.json, labels.csv, metrics.jsonl)")
    else:
        print(f"wrote {out}/config.yaml, metrics.jsonl, summary.json, labels.csv, checkpoint.pt")
    return 0


def add_executor_args(p) -> None:
    """``--executor {process,slurm}`` and the SLURM job array's resources (hallnll.tools.cluster)."""
    g = p.add_argument_group("executor", "where the runs go: local worker processes, or one SLURM job array "
                                         "(submitit; pip install -e '.[cluster]')")
    g.add_argument("--executor", choices=("process", "slurm"), default="process")
    g.add_argument("--partition", default=None, help="SLURM partition (default: the cluster's default)")
    g.add_argument("--gpus", type=int, default=0, help="GPUs per job (SLURM)")
    g.add_argument("--tasks", type=int, default=0,
                   help="processes per job (SLURM), the DDP ranks of its run; default: one per GPU, at least 1")
    g.add_argument("--cpus", type=int, default=1, help="CPUs per process, also its torch threads (SLURM; default 1)")
    g.add_argument("--mem-gb", type=float, default=4.0, help="memory per job in GB (SLURM; default 4)")
    g.add_argument("--timeout-min", type=int, default=60,
                   help="time limit per job in minutes (SLURM; default 60); a job that reaches it is requeued "
                        "and resumes from its checkpoint")
    g.add_argument("--array-parallelism", type=int, default=32, help="jobs of the array running at once (SLURM)")
    g.add_argument("--no-wait", action="store_true",
                   help="submit and return (SLURM); the same command later collects what has finished")
    g.add_argument("--slurm-logs", default=None, metavar="DIR", help="submitit's logs (default: slurm/ beside the runs)")


def slurm_options(args):
    """The :class:`hallnll.tools.cluster.SlurmOptions` of ``--executor slurm``, else None."""
    if getattr(args, "executor", "process") != "slurm":
        return None
    from .cluster import SlurmOptions

    return SlurmOptions(partition=args.partition, gpus=args.gpus, tasks=args.tasks, cpus=args.cpus, mem_gb=args.mem_gb,
                        timeout_min=args.timeout_min, array_parallelism=args.array_parallelism,
                        wait=not args.no_wait, folder=Path(args.slurm_logs) if args.slurm_logs else None)


def folder_config(train_csv, test_csv=None, params=None, overrides=()):
    """The config of ``hallnll fit-folder``: :func:`hallnll.label_issues.issue_config` (the
    profile, batch size, image size and cpu_bf16 choices :func:`hallnll.find_label_issues`
    makes too) with the CSVs, the name of the CSV's folder (unless set) and the images' own
    side (median of the first 256's shorter sides)."""
    import statistics

    from PIL import Image

    from ..data.sources import _read_path_label_csv
    from ..label_issues import issue_config

    sets = [f"folder_train_csv={train_csv}"] + ([f"folder_test_csv={test_csv}"] if test_csv else []) + list(overrides)
    given = {s.split("=", 1)[0].strip() for s in overrides}
    name = {} if "name" in given else {"name": Path(train_csv).resolve().parent.name or "folder"}
    issue_config(sets, 0, None, params, **name)  # the settings are checked before the data is read
    rows = _read_path_label_csv(Path(train_csv))
    if test_csv:
        _read_path_label_csv(Path(test_csv))  # read now: a bad test CSV is said before the header line
    sides = []
    for path, _, _ in rows[:256]:
        try:
            with Image.open(Path(train_csv).parent / path) as im:
                sides.append(min(im.size))
        except (OSError, ValueError):
            pass  # load_folder names the unreadable file
    native = int(statistics.median(sides)) if sides else None
    return issue_config(sets, len(rows), native, params, **name)


def cmd_fit_folder(args) -> int:
    """The label-issue report of one's own folder (hallnll.label_issues)."""
    from .. import label_issues
    from ..lock import check_output

    check_output(args.out)
    cfg = folder_config(args.train_csv, args.test, args.params, args.set)
    if args.no_progress:
        cfg = cfg.replace(progress=False)
    from ..engine import resolve_device

    print(f"hallnll fit-folder: {cfg.folder_train_csv}{' + ' + cfg.folder_test_csv if cfg.folder_test_csv else ''} "
          f"on {resolve_device(cfg.device)} ({cfg.threads or 'all'} CPU thread(s)): {cfg.arch} at {cfg.image_size} px, "
          f"{cfg.epochs} epochs, {cfg.label_folds} folds -> {args.out}")
    cols, s = label_issues.report(cfg, args.out, resume=not args.no_resume)
    n = s["n_train"]
    print(f"\n{s['n_label_issues']} of {n} training labels look wrong ({100 * s['label_issue_share']:.1f}%)"
          + (f"; test accuracy {100 * s['test_acc']:.2f}% ({s['n_label_issues_test']} test labels flagged)"
             if s["test_acc"] is not None else "; no test CSV, so no test accuracy"))
    print(f"{s['wall_seconds']:.0f} s. wrote {Path(args.out) / 'label_issues.csv'} (one row per image; "
          f"sort by label_quality, lowest first, to review), summary.json and the run folders under it")
    return 0


def cmd_quickstart(args) -> int:
    """The main job on the embedded default: every variant on digits with 40% C-based noise,
    :data:`QUICKSTART_SCHEDULE` (about 2 minutes on 2 cores), the variants run side by side
    (``--parallel``, default: one per CPU core, at most 4)."""
    from .figures import plot_correction, plot_training
    from .jobs import Job, run_jobs, worker_threads
    from ..lock import check_output
    from ..reporting import read_metrics
    from ..train import prepare

    out = check_output(args.out)
    if args.figures:
        check_output(args.figures, what="--figures")
    overrides = [*QUICKSTART_SCHEDULE, *args.set, *(["progress=false"] if args.no_progress else [])]
    base = load_config(QUICKSTART_PARAMS, overrides)  # its CPU threads: cfg.threads, as every command
    data, noisy, rep = prepare(base, progress=not args.no_progress)
    print(f"digits: {len(noisy)} training / {len(data.y_test)} test images, {base.noise} noise "
          f"({Path(base.noise_file).name if base.noise == 'file' else base.noise_seed}), "
          f"actual rate {100 * rep.actual_rate:.1f}%, {base.epochs} epochs")
    variants = ("hallnll", "gmm", "easy", "ce")  # the longest first: two workers finish together
    jobs = [Job(v, QUICKSTART_PARAMS, [*overrides, f"variant={v}", f"name=quickstart-{v}"], base.seed, out / v)
            for v in variants]
    parallel = args.parallel or min(len(jobs), worker_threads(1))
    results = dict(zip(variants, run_jobs(jobs, parallel, resume=not args.no_resume, data=data, noisy=noisy)))
    failed = [f"{v}: {r['error']}" for v, r in results.items() if not r["ok"]]
    if failed:
        print("error: " + "; ".join(failed), file=sys.stderr)
        return 1
    rows, hists = [], {}
    for variant in ("ce", "gmm", "easy", "hallnll"):
        s = results[variant]["summary"]
        hists[variant] = read_metrics(out / variant / "metrics.jsonl")
        last = hists[variant][-1]
        rows.append([variant, _fmt(s["best_acc"]), _fmt(s["last_acc"]), _fmt(last.get("precision_easy")),
                     last.get("n_clean_hard", "-"), _fmt(last.get("precision_clean_hard")),
                     _fmt(last.get("label_noise_rate")), _fmt(s["wall_seconds"], False)])
    print()
    print(table(rows, ["variant", "best acc %", "last acc %", "easy prec %", "|clean-hard|",
                        "clean-hard prec %", "train-label noise %", "seconds"]))
    fig_dir = Path(args.figures) if args.figures else out
    plot_training(hists, fig_dir / "quickstart_accuracy", title="digits, 40% classification-based noise")
    plot_correction(hists["hallnll"], fig_dir / "quickstart_correction", title="hallnll on digits")
    print(f"\nwrote {fig_dir}/quickstart_accuracy.png, {fig_dir}/quickstart_correction.png and runs under {out}/")
    return 0


def cmd_noise(args) -> int:
    """Make the noisy training labels of ``cfg.noise``, print their report, write the CSV."""
    from ..data import load_dataset
    from ..noise import make_noisy_labels, save_label_csv
    from ..lock import check_output
    from ..train import cpu_threads

    out = check_output(args.out, "file")  # before the labels are made (minutes for C-based noise)
    cfg = load_config(args.params, args.overrides)
    with cpu_threads(cfg.threads):  # the labels depend on the thread count: the same setting as train's
        data = load_dataset(cfg)
        noisy, rep = make_noisy_labels(cfg, data, progress=cfg.progress and not args.no_progress)
    print(rep.summary())
    out.parent.mkdir(parents=True, exist_ok=True)
    save_label_csv(out, data.y_train, noisy)
    print(f"wrote {out} ({len(noisy)} labels)")
    return 0


def cmd_reproduce(args) -> int:
    from .reproduce import main as reproduce_main

    return reproduce_main(args)


def cmd_fidelity(args) -> int:
    from .fidelity import main as fidelity_main

    return fidelity_main(args)


def cmd_bench(args) -> int:
    from .bench import main as bench_main

    return bench_main(args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hallnll", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)

    q = sub.add_parser("quickstart", help="the embedded default: digits, 40%% C-based noise, ce/gmm/easy/hallnll")
    q.add_argument("--out", default="runs/quickstart", help="run folders and figures (default runs/quickstart)")
    q.add_argument("--figures", default=None, metavar="DIR",
                   help="write the two figures here instead of --out (e.g. figures/ to refresh the README's)")
    q.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    q.add_argument("--parallel", type=int, default=0, metavar="N",
                   help="variants run at once (default: one per CPU core, at most 4)")
    q.add_argument("--no-resume", action="store_true")
    q.add_argument("--no-progress", action="store_true")
    q.set_defaults(fn=cmd_quickstart)

    t = sub.add_parser("train", help="train one params file")
    t.add_argument("params", help="a params YAML, or the name of a shipped one (digits-quick, cifar10-cbased-40, ...)")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    t.add_argument("--out", required=True)
    t.add_argument("--no-resume", action="store_true")
    t.add_argument("--seeds", type=int, default=1, help="run seeds seed..seed+N-1 into OUT/seedK")
    t.add_argument("--parallel", type=int, default=1, help="run this many seeds at once (one GPU)")
    t.add_argument("--warm-start", metavar="CHECKPOINT", default=None,
                   help="start from this warm-up checkpoint of a run that differs only in settings the warm-up "
                        "does not read (e.g. another variant); ends as training from scratch would")
    add_executor_args(t)
    t.set_defaults(fn=cmd_train)

    f = sub.add_parser("fit-folder", help="label issues of one's own images: path,label CSV(s) -> label_issues.csv",
                       description="Train the method on one's own images (out of sample, label_folds runs) and write "
                                   "label_issues.csv: per image its given and suggested label, is_label_issue and "
                                   "label_quality. Defaults: params/folder.yaml on a GPU, params/folder-cpu.yaml on a CPU.")
    f.add_argument("train_csv", help="CSV with columns path,label (paths relative to the CSV)")
    f.add_argument("--test", default=None, metavar="TEST.csv", help="a clean test CSV (same classes): test accuracy")
    f.add_argument("--out", required=True, help="run folder (resumes from it)")
    f.add_argument("--params", default=None, help="params instead of the folder / folder-cpu profile")
    f.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    f.add_argument("--no-resume", action="store_true")
    f.add_argument("--no-progress", action="store_true")
    f.set_defaults(fn=cmd_fit_folder)

    n = sub.add_parser("noise", help="write a noisy-label CSV and print its report",
                       description="Make the noisy training labels of a run (cfg.noise), print their noise "
                                   "report and write them as a label,label_noisy CSV.")
    n.add_argument("params", nargs="?", default=None, help="params YAML (default: built-in defaults)")
    n.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting, e.g. --set noise=ptd --set noise_rate=0.2 (repeatable)")
    n.add_argument("--out", required=True, metavar="FILE.csv", help="where to write the labels")
    n.add_argument("--no-progress", action="store_true", help="no progress bars")
    n.set_defaults(fn=cmd_noise)

    r = sub.add_parser("reproduce", help="papermill batches for a table of the paper")
    r.add_argument("table", nargs="?", default=None)
    r.add_argument("--scale", choices=("quick", "paper"), default="quick")
    r.add_argument("--seeds", type=int, default=None)
    r.add_argument("--parallel", type=int, default=1)
    r.add_argument("--list", action="store_true")
    r.add_argument("--results", default="results")
    r.add_argument("--runs", default="runs/reproduce")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    r.add_argument("--cells", default=None, metavar="NAME,...",
                   help="run only these cells of the table (names from --list); the table is still written "
                        "whole, the other cells from the runs they already have")
    add_executor_args(r)
    r.set_defaults(fn=cmd_reproduce)

    b = sub.add_parser("bench", help="seconds per phase, images/s and TFLOP/s")
    b.add_argument("--params", default=None)
    b.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    b.add_argument("--epochs", type=int, default=3)
    b.add_argument("--json", default="bench.json")
    b.add_argument("--peak-tflops", type=float, default=None, help="peak TFLOP/s the %% column refers to (default 800, dense bf16 H100)")
    b.add_argument("--parallel", type=int, default=None, help="run N bench processes at once on one device and sum their throughput")
    b.add_argument("--levers", nargs="?", const="all", default=None, metavar="NAMES",
                   help="one row per speed lever, each on top of the ones before (all, or a comma list of: "
                        "baseline, bf16, channels_last, cudnn_benchmark, fused_sgd, gmm_torch, hal_graph, "
                        "compile_model, compile_step, cuda_graphs)")
    b.set_defaults(fn=cmd_bench)

    f = sub.add_parser("fidelity", help="ce/gmm/easy/hallnll on clean and noisy labels of a real CIFAR-10 subset")
    f.add_argument("--params", default="fidelity-cifar10", help="default: the shipped fidelity-cifar10.yaml")
    f.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    f.add_argument("--out", default="runs/fidelity")
    f.add_argument("--seeds", type=int, default=1)
    f.add_argument("--parallel", type=int, default=2, help="cells run at once (default 2: one per core here)")
    f.add_argument("--variants", default="ce,gmm,easy,hallnll", help="add dividemix for DivideMix itself (two networks)")
    f.add_argument("--labels", default="clean,noisy")
    f.add_argument("--tol", type=float, default=0.005, help="clean labels: how far below ce an SSL variant may end")
    f.add_argument("--data-note", default="", help='how the report names the data, e.g. "CIFAR-10 (JPEG q75 copy)"')
    f.add_argument("--no-resume", action="store_true")
    f.add_argument("--report-only", action="store_true", help="run nothing; report what the cells have written so far")
    f.add_argument("--reference", default=None, metavar="DIR",
                   help="a folder of benchmarks/dividemix_reference.py JSON tables for the same data and schedule: "
                        "adds DivideMix's own loops and the checks of ce and gmm against them (and of dividemix: "
                        "agreement with --nets 2)")
    f.add_argument("--ref-tol", type=float, default=0.02,
                   help="how far below DivideMix's own loop ce and gmm may end (default 0.02: 2 points)")
    f.set_defaults(fn=cmd_fidelity)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    try:
        return args.fn(args)
    except _input_errors() as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # every file is written atomically and the last checkpoint is whole: the same command resumes
        print("\ninterrupted — run the same command to resume", file=sys.stderr)
        return 130
