"""What compile_triton.py and compile_cuda.py share: the targets' limits, theoretical occupancy, and
reading machine code with cuobjdump."""
from __future__ import annotations

import re
from pathlib import Path

# per-block and per-SM limits of the targets (CUDA C Programming Guide, compute capabilities table;
# shared memory per SM less the 1 KiB the driver reserves per block is what blocks can share)
LIMITS = {
    80: dict(shared_per_block=166912, shared_per_sm=167936, registers_per_sm=65536, warps_per_sm=64, blocks_per_sm=32),
    90: dict(shared_per_block=232448, shared_per_sm=233472, registers_per_sm=65536, warps_per_sm=64, blocks_per_sm=32),
}
# a SASS instruction line of cuobjdump -sass: /*0040*/ OPCODE ... ;
SASS_LINE = re.compile(r"\s*/\*[0-9a-f]{4,}\*/\s+\S.*;")


def theoretical_occupancy(registers: int, warps: int, shared_bytes: int, arch: int) -> float:
    """Resident warps / the SM's most, from registers, shared memory and warps per block, with the register
    file allocated per warp in units of 256 and 1 KiB of shared memory reserved per block."""
    limits = LIMITS[arch]
    regs_per_warp = -(-registers * 32 // 256) * 256
    blocks = min(limits["blocks_per_sm"], limits["warps_per_sm"] // warps,
                 limits["registers_per_sm"] // max(regs_per_warp, 1) // warps,
                 limits["shared_per_sm"] // (shared_bytes + 1024))
    return blocks * warps / limits["warps_per_sm"]


def bundled_cuobjdump() -> str:
    """The cuobjdump in Triton's wheel (the one that matches the ptxas Triton compiles with)."""
    import triton
    return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump")
