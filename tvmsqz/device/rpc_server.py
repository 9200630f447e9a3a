"""The TVM RPC server tvmsqz runs on a device: `tvm.rpc`'s server plus `tvmsqz.device_info`.

A standalone script (standard library and TVM only, never tvmsqz): `tvmsqz device serve` runs
it from the installed package, and the emulator copies it into the aarch64 root, which has TVM
but not tvmsqz. Over `python -m tvm.exec.rpc_server` it adds one thing the host needs: a
`tvmsqz.device_info` function saying what the device is (machine, CPU, cores, TVM version, and
whether it is the qemu-user emulator), so that emulated timings are always labelled as such.
"""

import argparse
import json
import logging
import os
import platform
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


def _register_info(info: dict) -> None:
    """Register `tvmsqz.device_info`; runs where sessions are served (forked per session)."""
    import tvm_ffi

    tvm_ffi.register_global_func(DEVICE_INFO_FUNC, lambda: json.dumps(info), override=True)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="tvmsqz device serve")
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=9090)
    p.add_argument("--port-end", type=int, default=None)
    p.add_argument("--tracker", default=None, help="HOST:PORT of the RPC tracker")
    p.add_argument("--key", default="")
    p.add_argument("--custom-addr", default=None, help="address the tracker hands to clients")
    p.add_argument("--emulated", action="store_true", help="this is the qemu-user emulator")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
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
