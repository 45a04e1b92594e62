"""Static checks of lnorm's CUDA kernels: nvcc and cuobjdump, no GPU (slow; skipped without the tools).

- No kernel spills: every kernel (INSTANTIATE_ALL: every public call of lnorm/cuda/norm.cuh for every
  (T, W)) compiled with -Xptxas -v for sm_80 and sm_90 reports 0 bytes of spill stores and loads.
  A spilling kernel keeps part of its working set in local memory (device memory behind L1), which
  costs bandwidth that a memory-bound kernel has none of to spare.
- bench/cuda_sass.py --quick prints its SASS-per-byte table with a row per bfloat16 kernel.

The ptxas report and SASS parsing live in bench/cuda_sass.py (shared with the benchmark script).
"""

import importlib.util
import os
import shutil
import subprocess
import sys

import pytest

from cuda_sources import INSTANTIATE_ALL

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SASS_SCRIPT = os.path.join(ROOT, "bench", "cuda_sass.py")
ARCHS = ("sm_80", "sm_90")


def _load_cuda_sass():
    spec = importlib.util.spec_from_file_location("lnorm_cuda_sass", SASS_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


cuda_sass = _load_cuda_sass()


@pytest.fixture(scope="module")
def ptxas_entries(tmp_path_factory):
    """ptxas's report on every kernel for sm_80 and sm_90 (one nvcc call, both targets)."""
    if cuda_sass.find_tool("nvcc") is None:
        pytest.skip("nvcc not found")
    _, report, _ = cuda_sass.compile_kernels(INSTANTIATE_ALL, ARCHS, str(tmp_path_factory.mktemp("ptxas")))
    return cuda_sass.parse_ptxas(report)


@pytest.mark.slow
def test_no_kernel_spills(ptxas_entries):
    kernels = [e for e in ptxas_entries if cuda_sass.is_lnorm_kernel(e.name)]
    for arch in ARCHS:  # the report was read: kernels of lnorm::cuda::detail for both targets
        assert any(e.arch == arch for e in kernels), (
            f"{arch}: no *_kernel of lnorm::cuda::detail in ptxas's report: {[e.name for e in ptxas_entries][:5]}")
    offenders = sorted((e for e in kernels if e.spills), key=lambda e: (e.arch, e.name))
    lines = [f"  {e.arch} {cuda_sass.short_name(e.name)}: {e.registers} registers, {e.stack} bytes stack frame, "
             f"{e.spill_stores} bytes spill stores, {e.spill_loads} bytes spill loads" for e in offenders]
    if offenders:
        pytest.fail(f"{len(offenders)} of {len(kernels)} kernel compilations spill (nvcc -O3 -Xptxas -v, "
                    f"{', '.join(ARCHS)}):\n" + "\n".join(lines), pytrace=False)


@pytest.mark.slow
def test_sass_table_quick(tmp_path):
    for tool in ("nvcc", "cuobjdump"):
        if cuda_sass.find_tool(tool) is None:
            pytest.skip(f"{tool} not found")
    out = tmp_path / "RESULTS_CUDA.md"
    proc = subprocess.run([sys.executable, SASS_SCRIPT, "--quick", "--out", str(out)], capture_output=True,
                          text=True, timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| sm_90 | `")]
    assert any("_kernel<__nv_bfloat16" in r for r in rows), proc.stdout[-3000:]
    per_byte = 0
    for r in rows:  # registers, SASS and row-loop counts are numbers; per-byte figures where T has VEC, ITEMS
        cells = [c.strip() for c in r.strip("|").split("|")]
        assert int(cells[2]) > 0 and int(cells[5]) > 0 and int(cells[6].split()[0]) > 0, r
        if cells[9] != "—":
            per_byte += 1
            assert float(cells[9]) > 0 and cells[10].endswith(" TB/s"), r
    assert per_byte > 0, proc.stdout[-3000:]
    text = out.read_text()
    assert text.startswith(cuda_sass.TITLE) and text.count(cuda_sass.SECTION) == 1
    # Written again: the section is replaced, not appended.
    cuda_sass.update_section(str(out), cuda_sass.SECTION + "\n\nagain\n")
    text = out.read_text()
    assert text.count(cuda_sass.SECTION) == 1 and "again" in text and "forward_rows_kernel" not in text


def test_parsers_on_a_canned_report():
    """The parsers on a few lines in ptxas's and cuobjdump's formats (no CUDA tools needed)."""
    if shutil.which("c++filt") is None and cuda_sass.find_tool("cu++filt") is None:
        pytest.skip("no demangler (c++filt, cu++filt)")
    name = "_ZN5lnorm4cuda6detail19forward_rows_kernelIfLi4ELi8EEEvNS1_12forward_argsIT_EEi"
    report = (f"ptxas info    : Compiling entry function '{name}' for 'sm_80'\n"
              f"ptxas info    : Function properties for {name}\n"
              "    24 bytes stack frame, 28 bytes spill stores, 20 bytes spill loads\n"
              "ptxas info    : Used 64 registers, used 1 barriers, 512 bytes smem, 400 bytes cmem[0]\n")
    (e,) = cuda_sass.parse_ptxas(report)
    assert (e.arch, e.registers, e.stack, e.spill_stores, e.spill_loads, e.smem) == ("sm_80", 64, 24, 28, 20, 512)
    assert e.spills and cuda_sass.is_lnorm_kernel(e.name)
    assert cuda_sass.short_name(e.name) in ("forward_rows_kernel<float, 4, 8>", name)
    sass = ("arch = sm_90\n"
            f"\t\tFunction : {name}\n"
            "        /*0000*/                   MOV R1, c[0x0][0x28] ;\n"
            "        /*0010*/                   ISETP.GE.AND P0, PT, R0, c[0x0][0x160], PT ;\n"
            "        /*0020*/                   LDG.E.128 R4, [R2.64] ;\n"
            "        /*0030*/               @P1 BRA 0x20 ;\n"
            "        /*0040*/                   STG.E.128 [R2.64], R4 ;\n"
            "        /*0050*/                   BRA.DIV UR4, 0x80 ;\n"
            "        /*0060*/              @!P0 BRA !P2, 0x10 ;\n"
            "        /*0070*/                   EXIT ;\n"
            "        /*0080*/                   SHFL.BFLY PT, R5, R4, 0x1, 0x1f ;\n"
            "        /*0090*/                   BRA 0x60 ;\n"
            "        /*00a0*/                   BRA 0xa0 ;\n"
            "        /*00b0*/                   NOP ;\n"
            "arch = sm_80\n"
            f"\t\tFunction : {name}\n"
            "        /*0000*/                   MOV R1, c[0x0][0x28] ;\n"
            "        /*0010*/                   BSSY B0, 0x60 ;\n"
            "        /*0020*/                   LDG.E.128 R4, [R2.64] ;\n"
            "        /*0030*/               @P0 CALL.REL.NOINC 0x60 ;\n"
            "        /*0040*/                   BRA 0x20 ;\n"
            "        /*0050*/                   NOP ;\n"
            "        /*0060*/                   BSYNC B0 ;\n"
            "        /*0070*/                   EXIT ;\n")
    f90, f80 = cuda_sass.parse_sass(sass)
    assert (f90.arch, f80.arch) == ("sm_90", "sm_80") and f90.count() == 11 and f80.count() == 7
    # sm_90: the loop tested at its bottom with the cold block it jumps to, the inner loop; not the
    # jump back from the cold block nor the padding.
    loops = f90.loops()
    assert [(lp.header, lp.instructions) for lp in loops] == [(0x10, 8), (0x20, 2)]
    assert sorted(loops[0].addrs) == [0x10, 0x20, 0x30, 0x40, 0x50, 0x60, 0x80, 0x90]
    assert f90.row_loop() == loops[0] and f90.inner_instructions(loops[0]) == 2
    # sm_80: tested at its top, left through a guarded CALL.REL.NOINC, closed by a plain BRA.
    assert [(lp.header, sorted(lp.addrs)) for lp in f80.loops()] == [(0x20, [0x20, 0x30, 0x40])]
    declared = {"forward_rows_kernel": ["T", "ROWS", "VEC", "ITEMS"]}
    t = cuda_sass.kernel_traffic("forward_rows_kernel<__nv_bfloat16, 2, 8, 8>", declared)
    assert (t.vec, t.items, t.read, t.written) == (8, 8, 16, 16)
    t = cuda_sass.kernel_traffic("backward_chunk_sums_kernel<float, 4, 8>", {})
    assert (t.read, t.written) == (64, 0)
    assert cuda_sass.kernel_traffic("reduce_partials_kernel<float, __half>", {"reduce_partials_kernel": ["C", "W"]}) is None
    for bad in ("forward_rows_kernel<float, 4, 8, 1024>", "forward_rows_kernel<int, 4, 8>",
                "forward_rows_kernel<float, 8, 8>", "forward_rows_kernel<float, 4, 6>", "mystery_kernel<float, 4, 8>"):
        with pytest.raises(ValueError):
            cuda_sass.kernel_traffic(bad, {})
