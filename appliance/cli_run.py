"""`appliance run`: the live edge collector (appliance/daemon.py) as a command.

Only argument handling and logging set-up live here; errors reach the CLI's one handler
(`appliance: error: …`, exit 1), and a clean stop (SIGTERM/SIGINT) exits 0.
"""

from __future__ import annotations

import logging
import sys

import click

from appliance import config


@click.command("run")
@click.option("-i", "--interface", "interfaces", multiple=True, help="Interface to capture on (repeatable; "
              "default: capture.interfaces from the config).")
@click.option("--bpf", help="BPF filter expression, tcpdump syntax (overrides capture.bpf).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="YAML config file (reloaded on SIGHUP).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Output directory.")
@click.option("--promiscuous/--no-promiscuous", default=None, help="Promiscuous mode (default: capture.promiscuous).")
@click.option("--allow-root", is_flag=True, help="Keep running as root when no run.user is configured.")
@click.option("--metrics", help="host:port for /metrics and /healthz ('' disables; default: run.metrics).")
@click.option("--rules", "rule_paths", multiple=True, type=click.Path(), help="Rule files or folders (default: config, "
              "then the shipped pack).")
@click.option("--no-rules", is_flag=True, help="Decode and enrich only; run no rules.")
@click.option("--geoip", multiple=True, type=click.Path(dir_okay=False), help="MaxMind-format .mmdb or a prefix CSV.")
@click.option("--requests-follow", multiple=True, type=click.Path(dir_okay=False),
              help="Follow a growing API gateway request log (rotation-aware; repeatable).")
@click.option("--accounts-follow", multiple=True, type=click.Path(dir_okay=False),
              help="Follow a growing account/payment export (repeatable).")
@click.option("--mapping", type=click.Path(dir_okay=False), help="Field-mapping YAML for followed request logs.")
@click.option("--state", "state_dir", type=click.Path(file_okay=False),
              help="Keep the entity graph here across restarts (must be writable by run.user).")
@click.option("--log-format", type=click.Choice(["json", "text"]), default="json", show_default=True,
              help="Log lines on stderr: one JSON object each (journald, log shippers) or text.")
def run(interfaces: tuple[str, ...], bpf: str | None, config_path: str | None, out_dir: str, promiscuous: bool | None,
        allow_root: bool, metrics: str | None, rule_paths: tuple[str, ...], no_rules: bool, geoip: tuple[str, ...],
        requests_follow: tuple[str, ...], accounts_follow: tuple[str, ...], mapping: str | None, state_dir: str | None,
        log_format: str) -> None:
    """Capture live on edge interfaces (AF_PACKET ring) into rotating events, alerts and findings in OUT.

    SIGHUP reloads the config and rules (a broken rule keeps the running set); SIGTERM or SIGINT
    flushes everything and exits 0.
    """
    from appliance.runtime import tune_for_batches

    tune_for_batches()  # the same batch work as a replay; before polars loads
    from appliance.daemon import Daemon, JsonLogFormatter, RunOptions

    root = logging.getLogger()
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonLogFormatter())
    else:
        handler.setFormatter(logging.Formatter("appliance: %(levelname)s: %(message)s"))
    root.handlers[:] = [handler]
    # A daemon reports start, reloads and rotations: INFO unless -v asked for more already.
    root.setLevel(min(root.level, logging.INFO))
    cfg = config.load(config_path)
    opts = RunOptions(interfaces=list(interfaces), out_dir=out_dir, config_path=config_path, bpf=bpf,
                      promiscuous=promiscuous, allow_root=allow_root, metrics=metrics, rules=list(rule_paths),
                      no_rules=no_rules, geoip=list(geoip), requests_follow=list(requests_follow),
                      accounts_follow=list(accounts_follow), mapping=mapping, state_dir=state_dir)
    daemon = Daemon(cfg, opts)
    daemon.start()
    code = daemon.run()
    sys.exit(code)
