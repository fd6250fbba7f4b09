"""codegen.sass compiles a generated kernel for sm90 on the CPU machine (triton's bundled ptxas/nvdisasm)."""
import json

import ir
from codegen.__main__ import main
from codegen.sass import compile_report, loop_mix
from ir import KernelConfig


def test_report_counts_registers_smem_and_opcodes():
    cfg = KernelConfig(block_m=1, block_n=64, block_k=128, split_k=1, num_warps=4, num_stages=1)
    rep = compile_report(ir.get_format("int4_g128_asym"), 1, 256, 512, "sm90", cfg)
    assert 16 <= rep.registers <= 255 and rep.spills == 0
    assert rep.occupancy_warps % cfg.num_warps == 0 and 0 < rep.occupancy_warps <= 64
    assert rep.mix.get("LDG", 0) > 0 and rep.mix.get("EXIT", 0) >= 1  # it loads and it returns
    assert "m1n64k128" in rep.table()
    loop = rep.main_loop   # the K loop: it loads words and does FFMAs; it is shorter than the whole kernel
    assert loop.get("LDG", 0) > 0 and loop.get("FFMA", 0) > 0 and sum(loop.values()) < sum(rep.mix.values())
    assert rep.weights_per_thread == 64 * 128 // 128 and "K loop:" in rep.table()


def test_loop_mix_takes_the_longest_backward_branch():
    listing = """
        /*0000*/                   MOV R1, c[0x0][0x28] ;
.L_x_0:
        /*0010*/                   FFMA R2, R3, R4, R2 ;
        /*0020*/                   LOP3.LUT R5, R6, 0xf, RZ, 0xc0, !PT ;
        /*0030*/               @P0 BRA `(.L_x_0) ;
.L_x_1:
        /*0040*/                   FADD R2, R2, R3 ;
        /*0050*/               @P1 BRA `(.L_x_1) ;
        /*0060*/                   BRA `(.L_x_2) ;
.L_x_2:
        /*0070*/                   EXIT ;
"""
    assert loop_mix(listing) == {"FFMA": 1, "LOP3": 1, "BRA": 1}
    assert loop_mix("        /*0000*/                   EXIT ;") == {}


def test_cli_prints_table_and_rejects_bad_config(capsys):
    cfg = {"block_m": 16, "block_n": 64, "block_k": 64, "split_k": 1, "num_warps": 4, "num_stages": 2}
    assert main(["sass", "gguf_q4_0", "--shape", "256,512", "--batch", "16", "--config", json.dumps(cfg)]) == 0
    assert "registers/thread" in capsys.readouterr().out
    assert main(["sass", "gguf_q4_0", "--shape", "256,512", "--config", json.dumps({**cfg, "split_k": 64})]) == 2
    assert "split_k=64 x block_k=64 exceeds K=512" in capsys.readouterr().err
