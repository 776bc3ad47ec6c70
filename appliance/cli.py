"""The one CLI boundary: only this module (and the cli_* command modules) print and exit.

Known errors become one `appliance: error: …` line and a documented exit code; anything else is an
internal error whose traceback `--traceback` shows (httpie's raw_main/program split).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import traceback
from enum import IntEnum
from typing import Any, Literal

import click

from appliance import __version__, config, secrets
from appliance.errors import ApplianceError, ConfigError, InputError


class ExitStatus(IntEnum):
    OK = 0
    ERROR = 1  # a known error (bad config, bad rule, unreadable file)
    USAGE = 2  # click's own usage errors
    PARTIAL_INPUT = 3  # some input could not be read to the end; everything before was written
    INTERNAL = 70  # a bug: run again with --traceback and report it


log = logging.getLogger("appliance")
progress_log = logging.getLogger("appliance.progress")


def _setup_logging(verbose: int, json_logs: bool) -> None:
    level = logging.WARNING - 10 * min(verbose, 2)
    handler = logging.StreamHandler(sys.stderr)
    if json_logs:
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("appliance: %(levelname)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    progress_log.setLevel(min(level, logging.INFO))  # progress lines show by default off a terminal


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps({"ts": self.formatTime(record), "level": record.levelname.lower(), "logger": record.name, "msg": record.getMessage()})


class _LazyGroup(click.Group):
    """Command groups living in their own modules, imported only when named: `appliance replay`
    then starts without loading the graph, report and rule tooling (a third of a second)."""

    LAZY = {
        "explain": "appliance.cli_report:explain",
        "graph": "appliance.cli_graph:graph",
        "report": "appliance.cli_report:report",
        "rules": "appliance.cli_rules:rules",
        "run": "appliance.cli_run:run",
        "simulate": "appliance.simulate.cli:simulate",
    }

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *self.LAZY])

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.LAZY and name not in self.commands:
            import importlib

            module, attr = self.LAZY[name].split(":")
            self.add_command(getattr(importlib.import_module(module), attr), name)
        return super().get_command(ctx, name)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="appliance")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.option("--json-logs", is_flag=True, help="Structured JSON log lines on stderr.")
@click.option("--traceback", "show_traceback", is_flag=True, help="Show the traceback of internal errors.")
@click.pass_context
def cli(ctx: click.Context, verbose: int, json_logs: bool, show_traceback: bool) -> None:
    """Find hidden third-party routers reselling model-API access, from packets and request logs."""
    _setup_logging(verbose, json_logs)
    ctx.ensure_object(dict)
    ctx.obj["traceback"] = show_traceback


@cli.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Output directory.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="YAML config file.")
@click.option("--batch-packets", type=int, help="Packets per batch (default from config: 131072).")
@click.option("--max-flows", type=int, help="Most live flows kept before eviction.")
@click.option("--workers", default="auto", show_default=True,
              help="Decoding processes (flows are sharded by a symmetric hash); auto = 2 for inputs >= 64 MB.")
@click.option("--geoip", multiple=True, type=click.Path(dir_okay=False), help="MaxMind-format .mmdb (repeatable) or a prefix CSV.")
@click.option("--catalogs", type=click.Path(file_okay=False), help="Data catalogs folder (default: rules/data).")
@click.option("--requests", "requests_paths", multiple=True, type=click.Path(), help="API gateway request logs (files or folders; repeatable).")
@click.option("--accounts", "accounts_paths", multiple=True, type=click.Path(), help="Account and payment records (repeatable).")
@click.option("--mapping", type=click.Path(dir_okay=False), help="Field-mapping YAML for request logs in another shape.")
@click.option("--rules", "rule_paths", multiple=True, type=click.Path(), help="Rule files or folders (default: the shipped pack).")
@click.option("--no-rules", is_flag=True, help="Decode and enrich only; run no rules.")
@click.option("--state", "state_dir", type=click.Path(file_okay=False), help="Keep the entity graph here across runs.")
@click.option("--report/--no-report", "with_report", default=None, help="Write report.html (default: config 'report', on).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON instead of a table.")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: on a terminal).")
def replay(paths: tuple[str, ...], out_dir: str, config_path: str | None, batch_packets: int | None,
           max_flows: int | None, workers: str, geoip: tuple[str, ...], catalogs: str | None, requests_paths: tuple[str, ...],
           accounts_paths: tuple[str, ...], mapping: str | None, rule_paths: tuple[str, ...], no_rules: bool,
           state_dir: str | None, with_report: bool | None, as_json: bool, progress: bool | None) -> None:
    """Replay pcap/pcapng files (or folders of them) into events, alerts and findings in OUT."""
    from appliance.parallel import ShardedReplay, auto_workers
    from appliance.runtime import tune_for_batches
    from appliance.sources.files import expand_paths

    tune_for_batches()  # before polars loads and the workers fork

    cfg = config.load(config_path)
    secrets.set_secret(cfg["secret"])
    files = expand_paths(paths)
    if not files:
        raise InputError(", ".join(paths), "no pcap or pcapng files found")
    os.makedirs(out_dir, exist_ok=True)
    limit_args = {
        "max_flows": max_flows or cfg["flows.max"],
        "tcp_idle_s": cfg["flows.tcp_idle_s"],
        "udp_idle_s": cfg["flows.udp_idle_s"],
        "other_idle_s": cfg["flows.other_idle_s"],
        "active_s": cfg["flows.active_s"],
        "community_id_seed": cfg["flows.community_id_seed"],
    }
    if limit_args["max_flows"] < 1:
        raise ConfigError("--max-flows must be at least 1")
    batch = batch_packets or cfg["batch_packets"]
    n_workers = auto_workers(files) if workers == "auto" else _positive_int(workers, "--workers")
    # Workers start first, from this still one-threaded process (appliance/parallel.py): rules,
    # databases and the heavy modules load here while they decode.
    sharded = ShardedReplay(files, limit_args, batch, n_workers).start() if n_workers > 1 else None

    from appliance.decode.flows import FlowLimits
    from appliance.detect.stage import Detection
    from appliance.enrich.catalog import Catalogs
    from appliance.enrich.geoip import GeoIP
    from appliance.pipeline import Pipeline
    from appliance.sinks.jsonl import JsonlWriter
    from appliance.sinks.summary import write_summary
    from appliance.sources.pcap import CaptureReader

    limits = FlowLimits(**limit_args)
    reader = CaptureReader(files, batch_size=batch)
    try:
        geo = GeoIP.open(list(geoip) or cfg["geoip"])
        catalogs_dir = catalogs or cfg["catalogs"] or os.path.join(config.PROJECT_RULES, "data")
        cats = Catalogs.load(catalogs_dir)
        alerts_out = JsonlWriter(os.path.join(out_dir, "alerts.jsonl"))
        detect = Detection(alerts_out.write_many, None if no_rules else list(rule_paths) or cfg["rules"] or [config.PROJECT_RULES],
                           catalogs_dir, state_dir, cats, cfg)
    except BaseException:  # a bad rule or database: the workers' decoding is of no use
        if sharded is not None:
            sharded.kill()
        raise
    started = time.perf_counter()
    show = sys.stderr.isatty() if progress is None else progress
    if sharded is not None:
        decode_summary, closing = _run_sharded(sharded, out_dir, limits, enricher(geo, cats), detect, reader, show)
    else:
        pipeline = Pipeline(out_dir, limits, enrichers=[enricher(geo, cats)], event_sinks=[detect.on_events])
        closing = _done(_run_with_progress(pipeline, reader, show))
        decode_summary = pipeline.summary()
    t_meta = time.perf_counter()
    metadata = ingest_metadata(out_dir, geo, requests_paths, accounts_paths, mapping, detect.on_events)
    t_finish = time.perf_counter()
    findings = detect.finish()
    alerts_out.close()
    findings_out = JsonlWriter(os.path.join(out_dir, "findings.jsonl"))
    findings_out.write_many(findings)
    findings_out.close()
    detection = detect.stats(findings)
    paths_out = closing.result()
    elapsed = time.perf_counter() - started
    decode_summary["timings_s"]["metadata"] = round(t_finish - t_meta, 4)
    decode_summary["timings_s"]["findings"] = round(time.perf_counter() - t_finish, 4)
    summary: dict[str, Any] = {
        "files": [{"path": f, "format": reader.stats.formats.get(f)} for f in files],
        "input_errors": reader.stats.errors,
        **decode_summary,
        "metadata": metadata,
        **detection,
        "geoip": geo.kinds,
        "compiled_kernels": _kernels(),
        "elapsed_s": round(elapsed, 3),
        "packets_per_s": round(decode_summary["packets"] / elapsed) if elapsed > 0 else None,
        "outputs": paths_out,
    }
    write_summary(out_dir, summary)
    if (cfg["report"] if with_report is None else with_report):
        from appliance.sinks.report import write_report

        write_report(out_dir)
    if as_json:
        click.echo(json.dumps(summary, indent=2, default=str))
    else:
        from rich.console import Console

        from appliance.cli_report import print_replay_summary

        print_replay_summary(summary, out_dir, Console())
    for err in reader.stats.errors:
        click.echo(f"appliance: error: {err}", err=True)
    if reader.stats.errors:
        sys.exit(ExitStatus.PARTIAL_INPUT)
    global _REPLAY_DONE
    _REPLAY_DONE = True


def _kernels() -> dict[str, bool]:
    """Which compiled kernels this process used (False: their Python twins ran)."""
    from appliance.decode import headers, tls
    from appliance.detect.rules import strdict
    from appliance.sources import recwalk

    return {"record_walk": recwalk.IN_USE, "headers": headers.IN_USE, "tls_hello": tls.IN_USE,
            "rule_strings": strdict.IN_USE}


def _positive_int(text: str, name: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(f"{name} takes a whole number or 'auto', not {text!r}") from None
    if value < 1:
        raise ConfigError(f"{name} must be at least 1")
    return value


def _run_sharded(sharded: Any, out_dir: str, limits: Any, enrich: Any, detect: Any, reader: Any, show: bool
                 ) -> tuple[dict[str, Any], Any]:
    """This process enriches and judges each batch's merged events while the workers decode the
    next (appliance/parallel.py). The event files are written by a thread (polars releases the GIL)
    while findings are made: a future of their paths is returned."""
    from appliance.pipeline import Pipeline

    route = Pipeline(out_dir, limits, enrichers=[enrich], event_sinks=[detect.on_events])
    t0 = time.perf_counter()
    if show:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TransferSpeedColumn

        with Progress(TextColumn(f"replay ({sharded.workers} workers)"), BarColumn(), TransferSpeedColumn(),
                      TimeElapsedColumn(), transient=True) as bar:
            task = bar.add_task("replay", total=reader.total_bytes or None)
            summary, errors, formats = sharded.drain(route, lambda done: bar.update(task, completed=done))
    else:
        summary, errors, formats = sharded.drain(route)
    reader.stats.errors.extend(errors)
    reader.stats.formats.update(formats)
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(1)
    closing = pool.submit(route.close_writers)
    pool.shutdown(wait=False)  # the thread finishes its one job; closing.result() waits for it
    summary["timings_s"]["decode_wall"] = round(time.perf_counter() - t0, 4)
    return summary, closing


def _done(value: Any) -> Any:
    """A finished future holding `value`."""
    from concurrent.futures import Future

    future: Future[Any] = Future()
    future.set_result(value)
    return future


def enricher(geo: Any, cats: Any) -> Any:
    """One enrichment step for the pipeline: learn DNS answers, add ASN/geo, then the service."""

    def enrich(etype: str, frame: Any) -> Any:
        if etype == "dns":
            cats.learn_dns(frame)
        return cats.service(geo.enrich(frame), etype)

    return enrich


def ingest_metadata(out_dir: str, geo: Any, requests_paths: tuple[str, ...], accounts_paths: tuple[str, ...],
                    mapping: str | None, on_events: Any) -> dict[str, Any]:
    """Request and account logs → enriched events/requests.parquet, events/accounts.parquet, rejects.jsonl."""
    from appliance import schema
    from appliance.sinks.parquet import EventWriter
    from appliance.sources.metadata import read_metadata

    counts: dict[str, Any] = {}
    rejects: list[dict[str, Any]] = []
    jobs: tuple[tuple[Literal["request", "account"], tuple[str, ...], str, str | None], ...] = (
        ("request", requests_paths, "source", mapping),
        ("account", accounts_paths, "signup", None),
    )
    for kind, paths, side, m in jobs:
        if not paths:
            continue
        result = read_metadata(list(paths), kind, m)
        frame = schema.conform(geo.enrich(result.frame, (side,)), kind, enriched=True)
        on_events(kind, frame)
        writer = EventWriter(out_dir, kind, enriched=True)
        writer.write(frame)
        writer.close()
        rejects += result.rejects
        counts[kind] = result.counts
    path = os.path.join(out_dir, "rejects.jsonl")
    with open(path + ".tmp", "w", encoding="utf-8") as fh:
        for r in rejects:
            fh.write(json.dumps(r, sort_keys=True, default=str) + "\n")
    os.replace(path + ".tmp", path)
    return counts


PROGRESS_LOG_EVERY_S = 5.0


def _run_with_progress(pipeline: Any, reader: Any, show: bool) -> dict[str, str]:
    if not show:  # not a terminal: a plain progress line every few seconds instead of a bar
        t0 = last = time.perf_counter()

        def log_tick(batch: Any) -> None:
            nonlocal last
            now = time.perf_counter()
            if now - last >= PROGRESS_LOG_EVERY_S:
                last = now
                n = pipeline.counters.packets
                progress_log.info("replay: %d packets, %.0f pkt/s", n, n / (now - t0))

        return pipeline.run_packets(reader.batches(), log_tick)
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TransferSpeedColumn

    columns = (TextColumn("replay"), BarColumn(), TransferSpeedColumn(), TextColumn("{task.fields[pps]} pkt/s"), TimeElapsedColumn())
    with Progress(*columns, transient=True) as bar:
        task = bar.add_task("replay", total=reader.total_bytes or None, pps="-")
        t0 = time.perf_counter()

        def tick(batch: Any) -> None:
            dt = max(time.perf_counter() - t0, 1e-9)
            bar.update(task, advance=batch.captured_bytes + 16 * len(batch), pps=f"{pipeline.counters.packets / dt:,.0f}")

        return pipeline.run_packets(reader.batches(), tick)


@cli.command("schema")
def schema_command() -> None:
    """Print the event schema (docs/schema.md is this output)."""
    from appliance import schema

    click.echo(schema.markdown(), nl=False)


@cli.group("config")
def config_group() -> None:
    """The configuration file."""


@config_group.command("example")
def config_example() -> None:
    """Print an example config with every setting, its default and its help."""
    click.echo(config.example_yaml())


@config_group.command("check")
@click.argument("path", type=click.Path(dir_okay=False))
def config_check(path: str) -> None:
    """Validate a config file (unknown keys and wrong types name file:line:column)."""
    config.load(path)
    click.echo(f"{path}: ok")


_REPLAY_DONE = False  # set when a replay has written and closed every output


def _exit_now() -> None:
    """End the process without the interpreter's teardown: freeing every module and frame of a
    replay took ~0.1 s (4 % of a 1M-packet run) after all output was written and closed. Only
    after a successful replay from the console (the daemon and other commands exit normally);
    logs and streams are flushed first."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(ExitStatus.OK)


def main(argv: list[str] | None = None) -> None:
    """Entry point: runs the click group and turns errors into exit codes."""
    args = sys.argv[1:] if argv is None else argv
    show_tb = "--traceback" in args
    try:
        cli.main(args=args, prog_name="appliance", standalone_mode=False)
        if argv is None and _REPLAY_DONE:
            _exit_now()
    except click.exceptions.Abort:
        click.echo("appliance: aborted", err=True)
        sys.exit(ExitStatus.ERROR)
    except click.ClickException as exc:
        exc.show()
        sys.exit(ExitStatus.USAGE)
    except ApplianceError as exc:
        click.echo(f"appliance: error: {exc}", err=True)
        sys.exit(ExitStatus.ERROR)
    except KeyboardInterrupt:
        click.echo("appliance: interrupted", err=True)
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as exc:  # the one place a bug is caught: one line, or the traceback on request
        if show_tb:
            traceback.print_exc()
        click.echo(f"appliance: internal error: {type(exc).__name__}: {exc} (run with --traceback for details)", err=True)
        sys.exit(ExitStatus.INTERNAL)


if __name__ == "__main__":
    main()
