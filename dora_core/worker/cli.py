"""The `dora` command line: train, export, merge, predict, sync, plot, presets."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from dora_core import __version__
from dora_core.contracts.rundir import JOB_FILE
from dora_core.contracts.wire import ORPHANED_EXIT, orphan_timeout_s

if TYPE_CHECKING:
    from dora_core.contracts.job import JobConfig

TRAIN_EPILOG = """\
The job file (YAML or JSON) holds these fields; model and dataset are required:

{fields}

Telemetry is off unless --api or DORA_API_URL names the API (`dora sync RUN_DIR
--api URL` uploads such a run later). The launcher
also sets DORA_RUN_ID (report into that run), DORA_INGEST_TOKEN (its writer
token) and DORA_API_INSTANCE (the API instance the run belongs to); a run
created with --api keeps its token and the API's instance id in the run
directory's telemetry-state.json, so --resume reports into the same run.
DORA_UPLOAD_ADAPTER=1 (set by the API's Ray launcher: the API cannot read
this run directory) uploads the final adapter to the API.
Exit status: 0 done, 2 bad job (one line on stderr names the field and the
fix), 1 training failed, 143 / 130 cancelled by SIGTERM / Ctrl-C (after a
checkpoint; continue with --resume), 75 the API took no telemetry for
--orphan-timeout seconds (after a checkpoint; continue with --resume).
"""


def _error(command: str, message: str, code: int = 2) -> int:
    print(f"dora {command}: error: {message}", file=sys.stderr)
    return code


def _cmd_presets(args: argparse.Namespace) -> int:
    from dora_core.contracts.presets import all_presets

    rows = all_presets()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for kind in ("model", "dataset"):
        print(f"{kind}s:")
        for row in rows:
            if row["kind"] != kind:
                continue
            state = "installed" if row["available"] else f"missing -> {row['install']}"
            tasks = ", ".join(row["tasks"])
            print(f"  {row['name']:<14} {state}; tasks: {tasks}\n      {row['description']}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from dora_core.contracts.job import JobConfigError, load_job_config

    if args.job and args.job_env:
        return _error("train", "give a job file or --job-env NAME, not both")
    try:
        if args.resume:
            run_dir = Path(args.resume)
            job = load_job_config(run_dir / JOB_FILE)
        elif args.job or args.job_env:
            job = load_job_config(args.job) if args.job else _job_from_env(args.job_env)
            run_dir = Path(args.output_dir) if args.output_dir else None
        else:
            return _error("train", "give a job file, or --resume RUN_DIR")
    except JobConfigError as exc:
        return _error("train", str(exc))
    upload = _switch("DORA_UPLOAD_ADAPTER")
    if isinstance(upload, str):
        return _error("train", upload)
    if args.report_to is not None:
        from dora_core.contracts.job import parse_job_config

        names = [name.strip() for name in args.report_to.split(",") if name.strip()]
        try:
            job = parse_job_config({**job.model_dump(mode="json"), "report_to": names})
        except JobConfigError as exc:
            return _error("train", f"--report-to {args.report_to!r}: {exc}")

    from dora_core.worker.train.loop import Telemetry, train

    api = args.api or os.environ.get("DORA_API_URL") or None
    run_id = os.environ.get("DORA_RUN_ID")
    token = os.environ.get("DORA_INGEST_TOKEN") or os.environ.get("DORA_API_TOKEN") or None
    orphan_timeout = orphan_timeout_s(args.orphan_timeout)
    if isinstance(orphan_timeout, str):
        return _error("train", orphan_timeout)
    telemetry = Telemetry(
        api_url=api,
        run_id=int(run_id) if run_id and api else None,
        token=token,
        instance=os.environ.get("DORA_API_INSTANCE") or None,
        report_every=args.report_every,
        orphan_timeout=orphan_timeout,
        upload_adapter=upload,
    )
    try:
        outcome = train(
            job,
            run_dir=run_dir,
            resume=bool(args.resume),
            telemetry=telemetry,
            progress=False if args.no_progress else None,
        )
    except JobConfigError as exc:
        return _error("train", str(exc))
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # the traceback is in the log and in the `failed` event
        import traceback

        traceback.print_exc()
        return _error("train", f"training failed: {type(exc).__name__}: {exc}", 1)
    if outcome.status == "cancelled":
        return 143
    if outcome.status == "orphaned":
        return ORPHANED_EXIT
    return 0


def _job_from_env(name: str) -> JobConfig:
    """The job as JSON in the environment variable ``name`` (the API's Ray launcher sends it
    so: the cluster's nodes do not see the API's disk)."""
    from dora_core.contracts.job import JobConfigError, parse_job_config

    text = os.environ.get(name, "")
    if not text.strip():
        raise JobConfigError([("", f"--job-env {name}: the variable is not set")])
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise JobConfigError([("", f"--job-env {name}: not valid JSON: {exc}")]) from None
    return parse_job_config(data)


def _switch(name: str) -> bool | str:
    """An on/off environment variable: 1/true/yes or 0/false/no (unset: off); a message
    when it is something else."""
    text = os.environ.get(name, "").strip().lower()
    if text in ("", "0", "false", "no"):
        return False
    if text in ("1", "true", "yes"):
        return True
    return f"{name}={os.environ[name]!r}: use 1 (on) or 0 (off)"


def _cmd_predict(args: argparse.Namespace) -> int:
    from dora_core.contracts.job import JobConfigError
    from dora_core.worker.train.artifacts import predict

    try:
        rows = predict(Path(args.run_dir), args.text)
    except (JobConfigError, ValueError, FileNotFoundError) as exc:
        return _error("predict", str(exc))
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for text, row in zip(args.text, rows, strict=True):
        probs = ", ".join(f"{name} {p:.3f}" for name, p in row["probabilities"].items())
        print(f"{row['label']}\t({probs})\t{text}")
    return 0


def _cmd_generate(args: argparse.Namespace) -> int:
    from dora_core.contracts.job import JobConfigError
    from dora_core.worker.train.artifacts import generate

    if (args.prompt is None) == (args.messages is None):
        return _error("generate", "give --prompt TEXT or --messages FILE.json (one of them)")
    messages = None
    if args.messages is not None:
        try:
            messages = json.loads(Path(args.messages).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            return _error("generate", f"--messages {args.messages}: {exc}")
        if not isinstance(messages, list):
            return _error("generate", "--messages: the file must hold a JSON list of messages")
    try:
        texts = generate(
            Path(args.run_dir),
            prompts=args.prompt,
            messages=messages,
            max_new_tokens=args.max_new_tokens,
        )
    except (JobConfigError, ValueError, FileNotFoundError) as exc:
        return _error("generate", str(exc))
    if args.json:
        print(json.dumps(texts, indent=2, ensure_ascii=False))
    else:
        print("\n\n".join(texts))
    return 0


def _cmd_sync(args: argparse.Namespace) -> int:
    """`dora sync`: upload a run trained without an API (dora_core/worker/telemetry/sync.py)."""
    from dora_core.contracts.hosts import dashboard_run_url
    from dora_core.worker.telemetry.sync import SyncError, sync

    api = args.api or os.environ.get("DORA_API_URL")
    if not api:
        return _error("sync", "give the API: --api URL (or set DORA_API_URL)")
    token = args.token or os.environ.get("DORA_API_TOKEN") or None
    try:
        done = sync(args.run_dir, api, token)
    except SyncError as exc:
        return _error("sync", str(exc), exc.code)
    where = dashboard_run_url(api, done.run_id, os.environ.get("DORA_DASH_URL"))
    at = f" ({where})" if where else ""
    if done.live:
        left = f"; {done.spool_left} spooled requests still undelivered" if done.spool_left else ""
        print(
            f"{args.run_dir} was reported live to this API as run {done.run_id}{at}: "
            f"nothing to sync{left}"
        )
        return 1 if done.spool_left else 0
    if done.sent == 0 and not done.created:
        print(f"{args.run_dir} is already synced to this API as run {done.run_id}{at}")
        return 0
    print(f"synced {args.run_dir} to {api} as run {done.run_id}{at}: {done.sent} records")
    if not done.finished:
        print(
            "the run has no final event yet (still training, or stopped): it shows as running; "
            "`dora sync` again sends what comes next"
        )
    return 0


PLOT_HELP = "draw a run's rank heatmap, budget, importance and curves to HTML or PNG (no server)"


def _cmd_plot(argv: list[str]) -> int:
    """`dora plot` is drawn by the dashboard's figure functions, which the worker may not
    import (docs/architecture.md): it runs ``dashboard.plot`` in its own process."""
    import importlib.util
    import subprocess

    if importlib.util.find_spec("dashboard") is None or importlib.util.find_spec("plotly") is None:
        return _error("plot", "needs the dashboard: pip install 'dora-toolkit[dashboard]'")
    code = "import sys; from dashboard.plot import main; sys.exit(main(sys.argv[1:], 'dora plot'))"
    return subprocess.run([sys.executable, "-c", code, *argv], check=False).returncode


def _ship(verb: str, args: argparse.Namespace) -> int:
    """`dora export` / `dora merge`: the run's adapter, or its merged model, at OUT."""
    from dora_core.contracts.job import JobConfigError
    from dora_core.worker.train.artifacts import export_adapter, merge_model

    write, done = {
        "export": (export_adapter, "PEFT adapter written to {}"),
        "merge": (merge_model, "merged model written to {} (load it with from_pretrained)"),
    }[verb]
    try:
        out = write(Path(args.run_dir), Path(args.out))
    except (JobConfigError, ValueError, FileNotFoundError) as exc:
        return _error(verb, str(exc))
    print(done.format(out))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dora",
        description="Dynamic Low-Rank Adaptation (Mao et al., ACL 2024): train, inspect and ship "
        "adapters whose rank is pruned under a global budget.",
    )
    parser.add_argument("--version", action="version", version=f"dora {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    from dora_core.contracts.job import fields_help

    train = sub.add_parser(
        "train",
        help="fine-tune a model from a job file (YAML or JSON)",
        description="Fine-tune a model with dora, lora, adalora or full: sequence classification "
        "(task: classification) or generation (task: causal-lm, seq2seq).",
        epilog=TRAIN_EPILOG.format(fields=fields_help()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    train.add_argument("job", nargs="?", help="job file (.yaml, .yml or .json)")
    train.add_argument(
        "--resume", metavar="RUN_DIR", help="continue a run from its last checkpoint"
    )
    train.add_argument(
        "--job-env",
        metavar="NAME",
        help="read the job (JSON) from this environment variable instead of a file",
    )
    train.add_argument("--output-dir", help="run directory (overrides output_dir in the job)")
    train.add_argument(
        "--api", metavar="URL", help="stream telemetry to this API (default $DORA_API_URL)"
    )
    train.add_argument(
        "--report-every",
        type=int,
        metavar="K",
        help="send scores/scalars every K steps (pruning events always)",
    )
    train.add_argument(
        "--orphan-timeout",
        metavar="SECONDS",
        help="stop (checkpointed, resumable, exit 75) once the API has taken no telemetry for "
        "this long: down, or another API instance at its address "
        "(default $DORA_ORPHAN_TIMEOUT_S or 1800)",
    )
    train.add_argument(
        "--report-to",
        metavar="NAMES",
        help="also log to these trackers, comma-separated: tensorboard, mlflow "
        "(overrides the job's report_to; '' for none)",
    )
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.set_defaults(func=_cmd_train)

    export = sub.add_parser("export", help="write a run's adapter as a PEFT LoRA adapter folder")
    export.add_argument("run_dir", help="a finished run directory")
    export.add_argument("out", help="output folder")
    export.set_defaults(func=lambda args: _ship("export", args))

    merge = sub.add_parser(
        "merge", help="write the model with the adapter merged in (loadable by from_pretrained)"
    )
    merge.add_argument("run_dir", help="a finished run directory")
    merge.add_argument("out", help="output folder")
    merge.set_defaults(func=lambda args: _ship("merge", args))

    predict = sub.add_parser(
        "predict", help="classify text with a run's trained model (label and probabilities)"
    )
    predict.add_argument("run_dir", help="a run directory (finished, or its newest checkpoint)")
    predict.add_argument(
        "--text", action="append", required=True, help="text to classify (repeatable)"
    )
    predict.add_argument("--json", action="store_true", help="machine-readable output")
    predict.set_defaults(func=_cmd_predict)

    gen = sub.add_parser(
        "generate", help="complete a prompt with a generative run's trained model (greedy)"
    )
    gen.add_argument(
        "run_dir", help="a causal-lm or seq2seq run (finished, or its newest checkpoint)"
    )
    gen.add_argument("--prompt", action="append", help="prompt to complete (repeatable)")
    gen.add_argument(
        "--messages",
        metavar="FILE.json",
        help="a chat history ([{role, content}, ...]) rendered with the run's chat template",
    )
    gen.add_argument(
        "--max-new-tokens",
        type=int,
        metavar="N",
        help="tokens to generate (default: the job's max_new_tokens)",
    )
    gen.add_argument("--json", action="store_true", help="machine-readable output")
    gen.set_defaults(func=_cmd_generate)

    sync = sub.add_parser(
        "sync",
        help="upload a run trained without --api to the API as an ordinary run (again: only "
        "what is new)",
        description="Upload a run directory trained without --api to the API, as an ordinary "
        "dashboard run: its config, module register, every metrics.jsonl record and its final "
        "status. Progress is kept in RUN_DIR/sync.json: syncing again sends only what is new, "
        "and a run that was reported live to this API is recognised and not duplicated.",
    )
    sync.add_argument("run_dir", help="a run directory (finished, stopped or still training)")
    sync.add_argument("--api", metavar="URL", help="the API (default $DORA_API_URL)")
    sync.add_argument(
        "--token", help="the API's token when it requires one (default $DORA_API_TOKEN)"
    )
    sync.set_defaults(func=_cmd_sync)

    # Parsed by dashboard.plot itself (main() hands it the arguments); listed here for --help.
    sub.add_parser("plot", help=PLOT_HELP, add_help=False)

    presets = sub.add_parser(
        "presets", help="list model and dataset presets and whether they are installed"
    )
    presets.add_argument("--json", action="store_true", help="machine-readable output")
    presets.set_defaults(func=_cmd_presets)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["plot"]:
        return _cmd_plot(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    if getattr(args, "report_every", None) is not None and args.report_every < 1:
        return _error(args.command, "--report-every: must be at least 1")
    if getattr(args, "max_new_tokens", None) is not None and args.max_new_tokens < 1:
        return _error(args.command, "--max-new-tokens: must be at least 1")
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
