"""The project's dot-product tensor intrinsics (u8 x s8 -> s32), registered with TVM by name.

Why a leaf module of its own: the int8 kernels (`backends/cpu/kernels/int8.py`) tensorize with
these names, and MetaSchedule's database replays those traces when it is opened, so the
database reader must register them too, without importing a backend.

TVM 0.27's `dot_16x4_vnni` calls `llvm.x86.avx512.vpdpbusd.512` with <16 x i32> operands, which
the LLVM it ships (22) rejects ("Call parameter type does not match function signature": the
operands are <64 x i8> now); these pass bytes.
"""

from __future__ import annotations

import functools

#: Intrinsic names, by (instruction set, output lanes).
VNNI_16x4 = "tvmsqz_vnni_16x4"
VNNI_8x4 = "tvmsqz_vnni_8x4"
AVX512BW_16x4 = "tvmsqz_avx512bw_16x4"
AVX2_8x4 = "tvmsqz_avx2_8x4"


@functools.cache
def register_intrinsics() -> None:
    """Register the dot-product tensor intrinsics (once per process): ours, and TVM's ARM ones
    (registered when their module is imported), which the ARM int8 kernels name."""
    import tvm.s_tir.tensor_intrin.arm_cpu  # noqa: F401 - registers sdot / NEON dot intrinsics
    from tvm.s_tir import TensorIntrin
    from tvm.script import tirx as T  # noqa: N812 - TVMScript's own spelling

    def desc(lanes: int):
        @T.prim_func(s_tir=True)
        def dot_desc(
            A: T.Buffer((4,), "uint8", offset_factor=1),  # noqa: N803 - TVMScript buffer names
            B: T.Buffer((lanes, 4), "int8", offset_factor=1),  # noqa: N803
            C: T.Buffer((lanes,), "int32", offset_factor=1),  # noqa: N803
        ) -> None:
            with T.sblock("root"):
                T.reads(C[0:lanes], A[0:4], B[0:lanes, 0:4])
                T.writes(C[0:lanes])
                for i in T.serial(0, lanes):
                    for k in T.serial(0, 4):
                        with T.sblock("update"):
                            vi, vk = T.axis.remap("SR", [i, k])
                            C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")

        return dot_desc

    def vnni(lanes: int, llvm_name: str):
        @T.prim_func(s_tir=True)
        def dot_vnni(
            A: T.Buffer((4,), "uint8", offset_factor=1),  # noqa: N803
            B: T.Buffer((lanes, 4), "int8", offset_factor=1),  # noqa: N803
            C: T.Buffer((lanes,), "int32", offset_factor=1),  # noqa: N803
        ) -> None:
            with T.sblock("root"):
                T.reads(C[0:lanes], A[0:4], B[0:lanes, 0:4])
                T.writes(C[0:lanes])
                a_i32 = T.reinterpret(A.vload([0], "uint8x4"), dtype="int32")
                a_u8 = T.reinterpret(T.broadcast(a_i32, lanes), dtype=f"int8x{lanes * 4}")
                C[T.ramp(T.int32(0), 1, lanes)] = T.call_llvm_pure_intrin(
                    T.llvm_lookup_intrinsic_id(llvm_name),
                    C.vload([0], dtype=f"int32x{lanes}"),
                    a_u8,
                    B.vload([0, 0], dtype=f"int8x{lanes * 4}"),
                    dtype=f"int32x{lanes}",
                )

        return dot_vnni

    def pmadd(lanes: int, ubsw: str, wd: str):
        """Without VNNI: `pmaddubsw` (u8 x s8 pairs -> s16) then `pmaddwd` (s16 pairs -> s32).
        `pmaddubsw` saturates (255 * 127 * 2 > 32767), so the activation bytes are split into
        their low 7 bits and their top bit: each half's pair sums fit in int16 exactly, and the
        top bit's sums are weighted by 128 in `pmaddwd`: exact for every u8 x s8 input,
        including QDQ models whose weights use the full int8 range."""

        @T.prim_func(s_tir=True)
        def dot_pmadd(
            A: T.Buffer((4,), "uint8", offset_factor=1),  # noqa: N803
            B: T.Buffer((lanes, 4), "int8", offset_factor=1),  # noqa: N803
            C: T.Buffer((lanes,), "int32", offset_factor=1),  # noqa: N803
        ) -> None:
            with T.sblock("root"):
                T.reads(C[0:lanes], A[0:4], B[0:lanes, 0:4])
                T.writes(C[0:lanes])
                a_i32 = T.reinterpret(A.vload([0], "uint8x4"), dtype="int32")
                low = T.reinterpret(T.broadcast(T.bitwise_and(a_i32, 0x7F7F7F7F), lanes), dtype=f"int8x{lanes * 4}")
                top = T.reinterpret(
                    T.broadcast(T.bitwise_and(T.shift_right(a_i32, 7), 0x01010101), lanes), dtype=f"int8x{lanes * 4}"
                )
                w = B.vload([0, 0], dtype=f"int8x{lanes * 4}")
                low_pairs = T.call_llvm_pure_intrin(
                    T.llvm_lookup_intrinsic_id(ubsw), low, w, dtype=f"int16x{lanes * 2}"
                )
                top_pairs = T.call_llvm_pure_intrin(
                    T.llvm_lookup_intrinsic_id(ubsw), top, w, dtype=f"int16x{lanes * 2}"
                )
                C[T.ramp(T.int32(0), 1, lanes)] = (
                    C.vload([0], dtype=f"int32x{lanes}")
                    + T.call_llvm_pure_intrin(
                        T.llvm_lookup_intrinsic_id(wd),
                        low_pairs,
                        T.broadcast(T.int16(1), lanes * 2),
                        dtype=f"int32x{lanes}",
                    )
                    + T.call_llvm_pure_intrin(
                        T.llvm_lookup_intrinsic_id(wd),
                        top_pairs,
                        T.broadcast(T.int16(128), lanes * 2),
                        dtype=f"int32x{lanes}",
                    )
                )

        return dot_pmadd

    TensorIntrin.register(VNNI_16x4, desc(16), vnni(16, "llvm.x86.avx512.vpdpbusd.512"))
    TensorIntrin.register(VNNI_8x4, desc(8), vnni(8, "llvm.x86.avx512.vpdpbusd.256"))
    TensorIntrin.register(
        AVX512BW_16x4, desc(16), pmadd(16, "llvm.x86.avx512.pmaddubs.w.512", "llvm.x86.avx512.pmaddw.d.512")
    )
    TensorIntrin.register(AVX2_8x4, desc(8), pmadd(8, "llvm.x86.avx2.pmadd.ub.sw", "llvm.x86.avx2.pmadd.wd"))
