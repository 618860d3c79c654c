"""`xdream dry-run`: the three roles as separate OS processes on 127.0.0.1.

The server binds a free port and says where; the recorder (with a simulated
rig) says where its screen tap listens; the presenter is started with both.
With `recorder="in-server"` the recorder runs as a thread of the server's
process (`xdream serve --simulate`), and the server says where the tap is.
The server's progress lines are passed through to this terminal.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from xdream import config as config_mod
from xdream.stdout_lines import LISTENING, SCREEN_TAP, SESSION_FOLDER
from xdream.errors import ConfigError, SessionError

XDREAM_FILES = "xdream-files"  # a MATLAB rig on XDream's file handshake: no presenter, the bridge stands in
RECORDERS = ("process", "in-server")   # where the recorder runs: its own process, or a thread of the server's


def add_parser(sub) -> None:
    d = sub.add_parser("dry-run", help="run server, presenter and a simulated rig+recorder as separate "
                                       "processes on 127.0.0.1, on the embedded default config")
    d.add_argument("config", nargs="?", help="config file (TOML/JSON); default: the embedded one")
    d.add_argument("--generations", type=int, help="override session.generations")
    d.add_argument("--out", help="override session.out_dir (where the session folder goes)")
    d.add_argument("--window", action="store_true",
                   help="present in a real PsychoPy window (needs a display) instead of headless")
    d.add_argument("--presenter-config", metavar="FILE",
                   help="the presenter's own config (monitor, simulated eye, markers, trials); "
                        "see stimulus_client/presenter.example.toml and configs/presenter-dry-run.toml")
    d.add_argument("--timeout", type=float, default=1800.0, help="give up after this many seconds")
    d.add_argument("--rig", metavar="NAME",
                   help="run the simulated neuron behind this rig's real wire format (openephys, intan, lsl, "
                        "...): the recorder uses the real adapter; default: the in-process simulated rig")
    d.add_argument("--recorder", choices=["process", "in-server"], default="process",
                   help="run the recorder as its own process (default, like `xdream record`) or as a thread "
                        "of the server's process (like `xdream serve --rig`)")
    d.set_defaults(func=run)


def run(args) -> int:
    return run_dry_run(args.config, generations=args.generations, out=args.out, window=args.window,
                       presenter_config=args.presenter_config, timeout_s=args.timeout, verbose=args.verbose,
                       rig=args.rig, recorder=args.recorder)


def run_dry_run(config_path: str | None, *, generations: int | None = None, out: str | None = None,
                window: bool = False, presenter_config: str | None = None, timeout_s: float = 1800.0,
                verbose: int = 0, rig: str | None = None, recorder: str = "process") -> int:
    cfg = config_mod.load(config_path)
    if generations is not None:
        cfg.session.generations = generations
    if out:
        cfg.session.out_dir = out
    cfg.validate()
    if rig is not None and rig != XDREAM_FILES:
        from simulators.wire_peers import PEERS
        if rig not in PEERS:
            raise ConfigError(f"no simulated rig {rig!r}; known: {', '.join(sorted([*PEERS, XDREAM_FILES]))}")
    if recorder not in RECORDERS:
        raise ConfigError(f"no recorder {recorder!r}; known: {', '.join(RECORDERS)}")
    if recorder == "in-server" and rig == XDREAM_FILES:
        raise ConfigError("--rig xdream-files has no recorder to move into the server (the bridge is both peers)")
    in_server = recorder == "in-server"
    procs: list[subprocess.Popen[str]] = []

    def kill_all() -> None:
        for p in procs:
            p.kill()

    timer = threading.Timer(timeout_s, kill_all)
    timer.daemon = True
    with tempfile.TemporaryDirectory(prefix="xdream-dry-run-") as tmp:
        cfg_file = Path(tmp) / "config.json"
        cfg_file.write_text(json.dumps(config_mod.to_dict(cfg)))
        cli = [sys.executable, "-m", "xdream.cli"] + ["-v"] * verbose
        try:
            timer.start()
            serve_cmd = cli + ["serve", str(cfg_file)]
            if in_server:
                serve_cmd += ["--simulate"] + (["--rig", rig] if rig else [])
            server = _start(procs, serve_cmd)
            tap = _wait_for_line(server, SCREEN_TAP) if in_server else None
            folder = _wait_for_line(server, SESSION_FOLDER)
            print(f"{SESSION_FOLDER}{folder}", flush=True)
            endpoint = _wait_for_line(server, LISTENING)
            matlab_rig = None
            if rig == XDREAM_FILES:  # a MATLAB rig shows and records: the bridge joins as both peers
                matlab_rig = _start_files_rig(procs, cli, endpoint, cfg, cfg_file, Path(tmp) / "handshake")
            else:
                if not in_server:
                    record_cmd = cli + ["record", "--server", endpoint, "--simulate", str(cfg_file)]
                    record_proc = _start(procs, record_cmd + (["--rig", rig] if rig else []))
                    tap = _wait_for_line(record_proc, SCREEN_TAP)
                if tap is None:
                    raise SessionError("the simulated rig said no screen tap")
                screen = cfg.presentation
                presenter_cmd = cli + ["present", "--server", endpoint, "--screen-tap", tap,
                                       "--log-dir", folder]
                if presenter_config:  # the stimulus PC's own config: monitor, eye, markers, trials
                    presenter_cmd += ["--config", presenter_config]
                else:
                    presenter_cmd += ["--window-size", *map(str, screen.window_size),
                                      "--frame-rate", str(screen.frame_rate_hz)]
                _start(procs, presenter_cmd if window else presenter_cmd + ["--headless"], stdout=None)
            for line in _lines(server):
                print(line, end="", flush=True)
            code = server.wait()
            if matlab_rig is not None:
                matlab_rig.terminate()  # a rig has no end of session; the bridge has left
            for p in procs[1:]:
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()
                    print(f"xdream dry-run: {_role(p)} did not stop; killed", file=sys.stderr)
            return code
        finally:
            timer.cancel()
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()


def _start_files_rig(procs: list, cli: list[str], endpoint: str, cfg, cfg_file: Path, folder: Path):
    """The simulated MATLAB rig and the bridge on XDream's file handshake; returns the rig."""
    from simulators.matlab_rig import READY

    rig = _start(procs, [sys.executable, "-m", "simulators.matlab_rig", "--dir", str(folder),
                         "--config", str(cfg_file)])
    _wait_for_line(rig, READY)
    _start(procs, cli + ["bridge", "--server", endpoint, "--dir", str(folder),
                         "--channels", str(len(cfg.simulator.units)),
                         "--answer-timeout", str(cfg.session.block_timeout_s)], stdout=None)
    return rig


def _start(procs: list, cmd: list[str], stdout=subprocess.PIPE) -> subprocess.Popen[str]:
    proc = subprocess.Popen(cmd, stdout=stdout, text=True, bufsize=1)
    procs.append(proc)
    return proc


def _wait_for_line(proc: subprocess.Popen[str], prefix: str) -> str:
    for line in _lines(proc):
        if line.startswith(prefix):
            return line[len(prefix):].strip()
    raise SessionError(f"{_role(proc)} exited (code {proc.wait()}) before saying {prefix!r}")


def _lines(proc: subprocess.Popen[str]):
    if proc.stdout is None:
        raise SessionError(f"{_role(proc)}: its output is not piped here")
    return proc.stdout


def _role(proc: subprocess.Popen[str]) -> str:
    """'serve CONFIG', 'record --server', ...: the command after `python -m xdream.cli`."""
    args = [str(a) for a in proc.args] if isinstance(proc.args, (list, tuple)) else [str(proc.args)]
    return " ".join(args[3:5])
