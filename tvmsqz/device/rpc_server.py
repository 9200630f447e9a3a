"""The TVM RPC server tvmsqz runs on a device: `tvm.rpc`'s server plus `tvmsqz.device_info`.

A standalone script (standard library and TVM only, never tvmsqz): `tvmsqz device serve` runs
it from the installed package, and the emulator copies it into the aarch64 root, which has TVM
but not tvmsqz. Over `python -m tvm.exec.rpc_server` it adds one thing the host needs: a
`tvmsqz.device_info` function saying what the device is (machine, CPU, cores, TVM version, and
whether it is the qemu-user emulator), so that emulated timings are always labelled as such.

TVM's RPC has no authentication: a client that reaches the server can upload a shared object
and load it, which runs its code here. So the server listens on 127.0.0.1 unless `--host` says
otherwise, and on any address that is not loopback it prints one warning line on stderr.
"""

import argparse
import ipaddress
import json
import logging
import os
import platform
import socket
import sys

#: The remote function the host calls (`tvmsqz.device.remote.device_info`).
DEVICE_INFO_FUNC = "tvmsqz.device_info"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k.strip().lower() in ("model name", "hardware", "cpu part"):
                    return v.strip()
    except OSError:
        pass
    return platform.processor() or ""


def is_loopback(host: str) -> bool:
    """Whether every address `host` names is a loopback address (0.0.0.0 and :: are not: they
    listen on every interface). An unresolvable name counts as not loopback."""
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return False
    addrs = {info[4][0].split("%", 1)[0] for info in infos}
    try:
        return bool(addrs) and all(ipaddress.ip_address(a).is_loopback for a in addrs)
    except ValueError:
        return False


def exposure_warning(host: str, port) -> str | None:
    """The one warning line for a server listening on `host` beyond this machine; None on loopback."""
    if is_loopback(host):
        return None
    return (
        f"warning: the RPC server listens on {host}:{port}, reachable from other machines: TVM RPC has "
        "no authentication, so anyone who can reach this port (or its tracker) can run code on this "
        "machine as this user; keep it on 127.0.0.1 behind an SSH tunnel or on a private network (docs/arm.md)"
    )


def _register_info(info: dict) -> None:
    """Register `tvmsqz.device_info`; runs where sessions are served (forked per session)."""
    import tvm_ffi

    tvm_ffi.register_global_func(DEVICE_INFO_FUNC, lambda: json.dumps(info), override=True)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="tvmsqz device serve")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    p.add_argument("--port", type=int, default=9090)
    p.add_argument("--port-end", type=int, default=None)
    p.add_argument("--tracker", default=None, help="HOST:PORT of the RPC tracker")
    p.add_argument("--key", default="")
    p.add_argument("--custom-addr", default=None, help="address the tracker hands to clients")
    p.add_argument("--emulated", action="store_true", help="this is the qemu-user emulator")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    warning = exposure_warning(a.host, a.port)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    import tvm
    from tvm import rpc

    tracker = None
    if a.tracker:
        if not a.key:
            sys.exit("tvmsqz device serve: --key is required with --tracker")
        host, port = a.tracker.rsplit(":", 1)
        tracker = (host, int(port))
    info = {
        "emulated": bool(a.emulated),
        "machine": platform.machine(),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "tvm": tvm.__version__,
        "key": a.key,
        "python": platform.python_version(),
    }
    if a.emulated:
        info["emulator"] = "qemu-user"
    port_end = a.port_end or a.port + 100
    try:
        # Serve from this process: `rpc.Server` starts a second Python (a PopenWorker) that
        # imports TVM again, which doubles the start-up time under emulation (6-25 s each).
        from tvm.rpc.server import PopenRPCServerState
    except ImportError:  # another TVM version on a board: the public server
        server = rpc.Server(
            a.host,
            a.port,
            port_end,
            tracker_addr=tracker,
            key=a.key,
            custom_addr=a.custom_addr,
            server_init_callback=lambda: _register_info(info),
        )
        port, wait = server.port, server.proc.join
    else:
        _register_info(info)
        state = PopenRPCServerState(
            a.host, a.port, port_end, tracker_addr=tracker, key=a.key, custom_addr=a.custom_addr
        )
        port, wait = state.port, state.thread.join
    print(
        f"tvmsqz-rpc-server: serving on {a.host}:{port} key={a.key!r} tracker={a.tracker} "
        f"emulated={a.emulated} machine={info['machine']}",
        flush=True,
    )
    try:
        wait()
    except KeyboardInterrupt:
        sys.stdout.flush()
        os._exit(0)  # the listening thread never returns; leave without waiting for it


if __name__ == "__main__":
    main()
