"""The `hapacs` command: run the agent, check a config, talk to a running agent.

Exit codes (README, "Commands"): 0 done; 1 refused, with the reason on stderr;
2 invalid configuration; 3 agent not reachable.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from . import __version__, timing
from .config import DEFAULT_PATH, ConfigError, load

EXIT_OK, EXIT_REFUSED, EXIT_CONFIG, EXIT_UNREACHABLE = 0, 1, 2, 3
# How long the agent may take to answer at all (a long command answers "pending" first).
ANSWER_TIMEOUT_S = 10.0


def add_config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", default=DEFAULT_PATH, metavar="FILE",
                        help=f"configuration file (default {DEFAULT_PATH})")


def add_socket_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--socket", metavar="PATH", help="the agent's control socket (default: from the config)")


def socket_path(args, strict: bool = False) -> str:
    """The control socket: --socket, else control.socket from -c FILE.

    `strict`: a config file that cannot be read raises OSError instead of
    giving the default socket (see config.control_socket_path).
    """
    if args.socket:
        return args.socket
    from .config import control_socket_path
    return control_socket_path(args.config, strict)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hapacs", description="High-availability agent for PACS servers.")
    parser.add_argument("--version", action="version", version=f"hapacs {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=text, description=text)
        add_config_option(sub)
        return sub

    run = command("run", "run the agent in the foreground (logs to stderr)")
    run.add_argument("--daemon", action="store_true", help="detach and run in the background")
    run.add_argument("--pidfile", metavar="PATH", help="with --daemon: the PID file to hold")
    run.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    check = command("check-config", "validate the configuration and check it against this host: exit 0 and "
                    "'ok', or 2 and every problem")
    check.add_argument("--file-only", action="store_true",
                       help="check the file alone, not against this host (for a file written for another host)")

    def control(name: str, text: str) -> argparse.ArgumentParser:
        sub = command(name, text)
        add_socket_option(sub)
        return sub

    status = control("status", "show the state of this node, its peers, checks and recent transitions")
    status.add_argument("--json", action="store_true", help="machine-readable JSON")
    control("takeover", "make this node MASTER now and keep it there until another command or a fault")
    release = control("release", "hand the VIPs to the best healthy BACKUP (after draining DICOM associations)")
    release.add_argument("--drain-timeout", type=float, default=timing.DEFAULT_DRAIN_TIMEOUT_S, metavar="SECONDS",
                         help="wait at most this long for open DICOM associations to end "
                              f"(default {timing.DEFAULT_DRAIN_TIMEOUT_S:g})")
    maintenance = control("maintenance", "freeze this node: no automatic transition while on")
    maintenance.add_argument("mode", choices=("on", "off"))
    drain = control("drain", "load balancing: this node's PACS takes no new association from the balancer "
                    "(on), open ones finish; or takes them again (off)")
    drain.add_argument("mode", choices=("on", "off"))
    reload = control("reload", "re-read the configuration file the agent was started with; an invalid one "
                     "is refused and the agent runs on")
    # -c given to reload must name the file the agent reads (it is refused otherwise);
    # without -c the agent's own file is meant, whatever it is.
    reload.set_defaults(config=None)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "check-config":
        return _check_config(args.config, host=not args.file_only)
    if args.command == "run":
        return _run(args)
    return _control(args)


def _refused(problems) -> int:
    """One line per problem on stderr, `FILE:LINE: key: message`; the exit code of a bad config."""
    for problem in problems:
        print(problem, file=sys.stderr)
    return EXIT_CONFIG


def _check_config(path: str, host: bool = True) -> int:
    """The file, then (when it is valid) whether it fits this host, as `run` and `reload` check it."""
    try:
        config = load(path)
    except ConfigError as err:
        return _refused(err.problems)
    if host:
        import asyncio
        from .hostcheck import check
        problems = asyncio.run(check(config))
        if problems:
            return _refused(problems)
    print("ok")
    print("checked against this host: interfaces, addresses, programs" if host else
          "the file alone: not checked against this host (run check-config on the host itself)", file=sys.stderr)
    return EXIT_OK


def _run(args) -> int:
    try:
        config = load(args.config)
    except ConfigError as err:
        return _refused(err.problems)
    if args.daemon:
        from .daemon import run_daemon
        return run_daemon(config, args.pidfile, args.log_level)
    from . import agent, logs
    logs.setup(args.log_level, config.node.name)
    return agent.run(config)


def _control(args) -> int:
    from .control import ControlError, request
    # "progress": commands that take time answer at once with the core's deadline for them,
    # and the client waits that long (no guess here of how long a handover takes).
    message: dict = {"command": args.command, "progress": True}
    if args.command == "reload" and args.config is not None:
        message["config"] = os.path.realpath(args.config)
    if args.config is None:
        args.config = DEFAULT_PATH
    if args.command in ("maintenance", "drain"):
        message["on"] = args.mode == "on"
    elif args.command == "release":
        if not 0 <= args.drain_timeout <= timing.MAX_DRAIN_TIMEOUT_S:
            print(f"refused: --drain-timeout must be from 0 to {timing.MAX_DRAIN_TIMEOUT_S:g} seconds",
                  file=sys.stderr)
            return EXIT_REFUSED
        message["drain_timeout_s"] = args.drain_timeout
    try:
        reply = request(socket_path(args), message, ANSWER_TIMEOUT_S)
    except ControlError as err:
        print(f"hapacs: {err}", file=sys.stderr)
        return EXIT_UNREACHABLE
    if args.command == "status" and reply.get("ok"):
        if args.json:
            print(json.dumps(reply["status"], indent=2))
        else:
            sys.stdout.write(reply["table"])
        return EXIT_OK
    if not reply.get("ok"):
        print(reply.get("message", "refused"), file=sys.stderr)
        return EXIT_REFUSED
    before, after = reply.get("before"), reply.get("after")
    change = f" ({before} -> {after})" if before and after and before != after else \
        (f" (still {after})" if after else "")
    print(f"{reply.get('message', 'done')}{change}")
    return EXIT_OK
