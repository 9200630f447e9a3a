"""Devices reached over TVM RPC: real boards, and an emulated aarch64 board for tests.

* `procs`: the process groups started here (trackers, servers): spawn, liveness, stop, ports.
* `rpc`: the tracker (start, `tvm.rpc` client with timeouts), device sessions, `serve`.
* `rpc_server`: the standalone device server script (TVM's server plus `tvmsqz.device_info`).
* `emulator`: the qemu-user aarch64 root, emulated servers, `emulate start/stop/status`.
* `remote`: run and time artifacts on a device, `bench --rpc-tracker`.
* `tuning`: MetaSchedule builder/runner for tuning on RPC devices.

Cross export and ELF checks live with the CPU backend (`tvmsqz.backends.cpu.cross`). Only the
standard library and psutil are imported here; TVM is imported where it is used.
"""

from .emulator import (
    DEFAULT_EMU_KEY,
    EMULATED_NOTE,
    EmulatedDevices,
    arm_root,
    emulate_start,
    emulate_status,
    emulate_stop,
    emulated_devices,
    emulated_devices_procs,
    emulator_problem,
    emulator_ready,
    require_emulator,
    start_emulated_server,
)
from .procs import Proc, free_port, group_members, state_dir, stop
from .remote import RemoteResult, device_info, remote_bench, remote_inference, run_remote, time_remote
from .rpc import (
    DEFAULT_SERVER_PORT,
    DEFAULT_TRACKER_PORT,
    check_tracker,
    device_count,
    list_devices,
    parse_host_port,
    require_devices,
    rpc_session,
    serve,
    serve_command,
    start_tracker,
    tracker_summary,
    wait_registered,
)
from .tuning import (
    make_cross_builder,
    make_device_watch,
    make_rpc_runner,
    make_rpc_runner_builder,
    preload_tensor_intrin,
)

__all__ = [
    "DEFAULT_EMU_KEY",
    "DEFAULT_SERVER_PORT",
    "DEFAULT_TRACKER_PORT",
    "EMULATED_NOTE",
    "EmulatedDevices",
    "Proc",
    "RemoteResult",
    "arm_root",
    "check_tracker",
    "device_count",
    "device_info",
    "emulate_start",
    "emulate_status",
    "emulate_stop",
    "emulated_devices",
    "emulated_devices_procs",
    "emulator_problem",
    "emulator_ready",
    "free_port",
    "group_members",
    "list_devices",
    "make_cross_builder",
    "make_device_watch",
    "make_rpc_runner",
    "make_rpc_runner_builder",
    "parse_host_port",
    "preload_tensor_intrin",
    "remote_bench",
    "remote_inference",
    "require_devices",
    "require_emulator",
    "rpc_session",
    "run_remote",
    "serve",
    "serve_command",
    "start_emulated_server",
    "start_tracker",
    "state_dir",
    "stop",
    "time_remote",
    "tracker_summary",
    "wait_registered",
]
