"""SASS instructions per byte of lnorm's CUDA kernels: a static proxy for their speed, no GPU needed.

    python bench/cuda_sass.py                          # sm_90, every kernel: a markdown table
    python bench/cuda_sass.py --arch sm_80             # another architecture (repeatable)
    python bench/cuda_sass.py --quick                  # sm_90, bfloat16 kernels only (~15 s on 2 cores)
    python bench/cuda_sass.py --types bf16,f32 --out bench/RESULTS_CUDA.md

Compiles tests/cuda_sources.py's INSTANTIATE_ALL (every public call of lnorm/cuda/norm.cuh for every
(T, W), hence every kernel) with nvcc -Xptxas -v for each --arch, disassembles the object with
cuobjdump -sass, and reports for every kernel (a function named *_kernel in lnorm::cuda::detail):
registers, stack frame and spill bytes (ptxas's report), SASS instructions in all, and those of its
row loop, per 16 bytes of the global-memory traffic of one iteration of that loop.

How the row loop is found: the function's SASS is cut into basic blocks at branch targets and after
control transfers (BRA, guarded or with a condition operand as in ``@!P3 BRA !P1, ...`` and
``BRA.DIV``, also falls through; CALL goes to its target and on, as sm_80 code leaves loops by
``@P0 CALL.REL.NOINC`` to the exit; EXIT and RET end a path). A loop is a natural loop of that
graph: a back edge B -> H where H dominates B (every path from the entry to B passes H), its body H
plus every block that reaches B without passing H. So a loop whose test is at its bottom (sm_90) or
at its top (sm_80), and the cold blocks laid out after the exit that jump back into it (the
``BRA.DIV`` fallbacks of warp shuffles), count as its own, while those jumps back are no loops of
their own, nor is the ``BRA`` to itself that pads a function's end (unreachable). The row loop is
the loop with the most instructions (the outermost: every other loop of the row kernels nests in it,
or is a short prologue or epilogue loop). Its instructions are counted once each (NOPs excluded),
inner loops once, inline cold paths (the overflow re-pass, rows longer than the registers hold,
partial packs at a row's end) included, and both norms' paths where a kernel takes layer norm or
RMSNorm as a run-time flag (as today's `a.rms`). It is a static count, not the executed one:
compare kernels with each other and one version with the next, not with a measured time. A kernel
without a loop is counted whole (marked "whole kernel"). The "inner" column counts the row loop's
instructions that lie in loops nested in it.

Bytes per thread per row iteration, from the kernel's template arguments (demangled): T is the first
template argument (float, double, __half, __nv_bfloat16); VEC and ITEMS are the integer template
parameters so named in the kernel's declaration in cpp/include/lnorm/cuda/*.cuh (today
``template <class T, int VEC, int ITEMS>``: VEC elements per 16-byte-or-smaller access, ITEMS
elements of a row per thread per iteration), found by name, so added or reordered parameters
(MAX_THREADS, ROWS, ...) are fine. Where a kernel's declaration is not found, the integer arguments
must be exactly two, taken as (VEC, ITEMS). Anything else (T not an element type, VEC or ITEMS
missing, ITEMS not a multiple of VEC, VEC * sizeof(T) > 16) stops the script with the kernel's name
rather than print a wrong figure. Kernels without VEC and ITEMS (reduce_partials_kernel) get a row
without the per-byte columns. The traffic of one iteration, per thread:

    forward_*  (rows, chunk_normalize): ITEMS * sizeof(T) read (x) + the same written (y)
    forward_*stats*:                     ITEMS * sizeof(T) read
    backward_* (rows, chunk):           2 * ITEMS * sizeof(T) read (x, dy) + ITEMS * sizeof(T) written (dx)
    backward_*sums*:                     2 * ITEMS * sizeof(T) read

(the plain norms' traffic: the fused add runs the forward kernels with residual and s as well.)
The issue-rate bound on an H100 SXM: 132 SMs x 4 schedulers x 1 warp instruction per clock x
1.755 GHz, each warp instruction covering 32 threads, so bandwidth <= 132 * 4 * 1.755e9 * 32 /
(instructions per byte per thread) bytes/s, next to the ~3.0 TB/s a device-to-device copy measured
on that H100 (bytes read + written). A kernel whose bound is far above 3.0 TB/s is not limited by
issuing instructions; one near or below it may be (if its cold paths are not what makes the count).

--out FILE writes (or replaces) the section "## SASS per byte (static, no GPU)" of FILE (created,
with a title, when missing). The helpers here (tool lookup, compiling, ptxas report and SASS
parsing) are also used by tests/test_cuda_static.py.
"""

from __future__ import annotations

import argparse
import datetime
import glob
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
INCLUDE = os.path.join(ROOT, "cpp", "include")
CUDA_HEADERS = os.path.join(INCLUDE, "lnorm", "cuda")
DEFAULT_OUT = os.path.join(HERE, "RESULTS_CUDA.md")
SECTION = "## SASS per byte (static, no GPU)"
COMMON_SECTION = "## SASS per byte, the common path (static, no GPU)"
TITLE = "# lnorm CUDA benchmark results"

# H100 SXM: SMs, schedulers per SM, boost clock (Hz), threads per warp instruction; copy rate (B/s).
H100_SMS, H100_SCHEDULERS, H100_CLOCK, WARP = 132, 4, 1.755e9, 32
H100_COPY = 3.0e12
ISSUE_RATE = H100_SMS * H100_SCHEDULERS * H100_CLOCK * WARP  # thread-instructions per second

ELEMENT_SIZES = {"float": 4, "double": 8, "__half": 2, "__nv_bfloat16": 2}
TYPE_KEYS = {"f32": "float", "f64": "double", "f16": "__half", "bf16": "__nv_bfloat16"}


# ---- tools ----------------------------------------------------------------------------------------


def find_tool(name: str) -> Optional[str]:
    """A CUDA tool (nvcc, cuobjdump, nvdisasm, cu++filt): PATH, $CUDA_HOME/bin, /usr/local/cuda*/bin,
    beside nvcc, or a pip wheel's nvidia/cu*/bin (nvidia-cuda-cuobjdump) on this Python's path."""
    found = shutil.which(name)
    if found:
        return found
    dirs = [os.path.join(os.environ[v], "bin") for v in ("CUDA_HOME", "CUDA_PATH") if os.environ.get(v)]
    dirs += ["/usr/local/cuda/bin"] + sorted(glob.glob("/usr/local/cuda-*/bin"), reverse=True)
    nvcc = shutil.which("nvcc")
    if nvcc:
        dirs.append(os.path.dirname(os.path.realpath(nvcc)))
    for entry in sys.path:
        dirs += sorted(glob.glob(os.path.join(entry or ".", "nvidia", "cu*", "bin")), reverse=True)
    for d in dirs:
        path = os.path.join(d, name)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def demangle(names: Iterable[str]) -> Dict[str, str]:
    """Mangled -> demangled, through cu++filt or c++filt (the names as given where neither exists)."""
    names = list(dict.fromkeys(names))
    tool = find_tool("cu++filt") or shutil.which("c++filt")
    if tool is None or not names:
        return {n: n for n in names}
    proc = subprocess.run([tool], input="\n".join(names) + "\n", capture_output=True, text=True, check=True)
    out = proc.stdout.splitlines()
    if len(out) != len(names):
        raise RuntimeError(f"{tool} returned {len(out)} names for {len(names)}")
    return dict(zip(names, out))


def instantiation_source(types: Optional[Sequence[str]] = None) -> str:
    """tests/cuda_sources.py's INSTANTIATE_ALL, keeping only the `instantiate<T, W>` lines whose T is
    one of `types` (C++ names) when given."""
    spec = importlib.util.spec_from_file_location("lnorm_cuda_sources", os.path.join(ROOT, "tests", "cuda_sources.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    src = module.INSTANTIATE_ALL
    if not types:
        return src
    line = re.compile(r"^template void instantiate<\s*([\w:]+)\s*,.*$", re.MULTILINE)
    kept = [m.group(0) for m in line.finditer(src) if m.group(1) in types]
    if not kept:
        raise SystemExit(f"INSTANTIATE_ALL has no `template void instantiate<T, W>();` line for {list(types)}")
    return line.sub("", src) + "\n".join(kept) + "\n"


def compile_kernels(source: str, archs: Sequence[str], workdir: str, timeout: float = 1800,
                    defines: Sequence[str] = ()) -> Tuple[str, str, float]:
    """nvcc -c -Xptxas -v of `source` for each of `archs` ("sm_90") in one call; returns (object
    file, ptxas's report, seconds). Raises RuntimeError with nvcc's output when it fails."""
    nvcc = find_tool("nvcc")
    if nvcc is None:
        raise RuntimeError("nvcc not found")
    src = os.path.join(workdir, "lnorm_kernels.cu")
    obj = os.path.join(workdir, "lnorm_kernels.o")
    with open(src, "w") as f:
        f.write(source)
    cmd = [nvcc, "-std=c++17", "-O3", f"-I{INCLUDE}", "-Xptxas=-v", "-c", src, "-o", obj]
    cmd += [f"-D{d}" for d in defines]
    for arch in archs:
        num = arch.split("_", 1)[1]
        cmd.append(f"-gencode=arch=compute_{num},code={arch}")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    seconds = time.perf_counter() - t0
    output = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{output[-6000:]}")
    return obj, output, seconds


# ---- ptxas's report -------------------------------------------------------------------------------


@dataclass
class PtxasEntry:
    """ptxas's report on one entry function (kernel) for one architecture."""

    mangled: str
    arch: str
    registers: int
    stack: int
    spill_stores: int
    spill_loads: int
    smem: int = 0
    name: str = ""  # demangled, filled in by parse_ptxas

    @property
    def spills(self) -> bool:
        return self.spill_stores > 0 or self.spill_loads > 0


_ENTRY = re.compile(r"Compiling entry function '([^']+)' for '(sm_\w+)'")
_PROPS = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers")
_SMEM = re.compile(r"(\d+) bytes smem")


def parse_ptxas(text: str, demangled: bool = True) -> List[PtxasEntry]:
    """Every kernel of a `-Xptxas -v` report: for each "Compiling entry function 'NAME' for 'sm_XX'",
    the "Function properties for NAME" line's stack and spill bytes and the "Used N registers" line.
    Raises ValueError if an entry's block lacks them (a changed report format)."""
    entries: List[PtxasEntry] = []
    starts = list(_ENTRY.finditer(text))
    for i, m in enumerate(starts):
        end = starts[i + 1].start() if i + 1 < len(starts) else len(text)
        block = text[m.end():end]
        mangled, arch = m.group(1), m.group(2)
        at = block.find(f"Function properties for {mangled}")
        props = _PROPS.search(block, at if at >= 0 else 0)
        used = _USED.search(block)
        if props is None or used is None:
            raise ValueError(f"ptxas report for {mangled} ({arch}) lacks its stack/spill or register line:\n{block[:800]}")
        smem = _SMEM.search(block, used.start())
        entries.append(PtxasEntry(mangled, arch, int(used.group(1)), int(props.group(1)), int(props.group(2)),
                                  int(props.group(3)), int(smem.group(1)) if smem else 0))
    if demangled and entries:
        names = demangle(e.mangled for e in entries)
        for e in entries:
            e.name = names[e.mangled]
    return entries


def short_name(demangled: str) -> str:
    """'void lnorm::cuda::detail::k<float, 4, 8>(args...)' -> 'k<float, 4, 8>'."""
    s = demangled[5:] if demangled.startswith("void ") else demangled
    depth = 0
    for i, ch in enumerate(s):  # cut the argument list: the first '(' outside template brackets
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        elif ch == "(" and depth == 0:
            s = s[:i]
            break
    return s.replace("lnorm::cuda::detail::", "")


def is_lnorm_kernel(demangled: str) -> bool:
    """A kernel of lnorm's CUDA backend: a function named *_kernel in lnorm::cuda::detail."""
    return re.search(r"\blnorm::cuda::detail::\w*_kernel\b", demangled) is not None


# ---- SASS -----------------------------------------------------------------------------------------


@dataclass
class Instr:
    addr: int
    text: str  # without the trailing ';'

    @property
    def opcode(self) -> str:
        parts = self.text.split()
        if parts and parts[0].startswith("@"):
            parts = parts[1:]
        return parts[0] if parts else ""

    @property
    def predicated(self) -> bool:
        return self.text.startswith("@")


@dataclass
class Loop:
    header: int  # address of the loop's first block (the back edges' target)
    addrs: frozenset  # addresses of its instructions (NOPs excluded)

    @property
    def instructions(self) -> int:
        return len(self.addrs)

    @property
    def start(self) -> int:
        return min(self.addrs)

    @property
    def end(self) -> int:
        return max(self.addrs)


def _successors(ins: Instr, next_addr: Optional[int]) -> Optional[List[int]]:
    """Where control goes after `ins`: None for an instruction that falls through and ends no block;
    else the list of successor addresses (empty for EXIT, RET, an indirect branch).

    BRA is conditional when guarded (@P0), or when it has an operand before its target (BRA !P1,
    BRA.DIV UR4, BRA.CONV ~URZ): then it also falls through. CALL goes to its target and on to the
    next instruction: a call returns there, and sm_80 code also leaves loops by a guarded
    CALL.REL.NOINC to the loop's exit."""
    op = ins.opcode
    guarded = ins.predicated and not ins.text.startswith("@PT ")
    fall = [next_addr] if next_addr is not None else []
    if op.startswith(("BRA", "CALL")):
        target = _branch_target(ins.text)
        targets = [target] if target is not None else []
        operands = ins.text.split(op, 1)[1]
        conditional = guarded or op.startswith("CALL") or "," in operands
        return targets + fall if conditional else targets
    if op.startswith(("EXIT", "RET", "BRX", "JMX", "JMP", "KILL")):
        return fall if guarded else []
    return None


def _dominators(succ: Dict[int, List[int]], entry: int) -> Tuple[Dict[int, int], List[int]]:
    """Immediate dominators of the blocks reachable from `entry` (Cooper, Harvey and Kennedy's
    iteration over reverse postorder), and that order."""
    order: List[int] = []
    seen = {entry}
    stack = [(entry, iter(succ[entry]))]
    while stack:  # iterative DFS for the postorder
        node, it = stack[-1]
        for nxt in it:
            if nxt in succ and nxt not in seen:
                seen.add(nxt)
                stack.append((nxt, iter(succ[nxt])))
                break
        else:
            order.append(node)
            stack.pop()
    order.reverse()
    index = {b: i for i, b in enumerate(order)}
    preds: Dict[int, List[int]] = {b: [] for b in order}
    for b in order:
        for nxt in succ[b]:
            if nxt in index:
                preds[nxt].append(b)
    idom = {entry: entry}
    changed = True
    while changed:
        changed = False
        for b in order[1:]:
            done = [p for p in preds[b] if p in idom]
            new = done[0]
            for p in done[1:]:
                x, y = p, new
                while x != y:
                    while index[x] > index[y]:
                        x = idom[x]
                    while index[y] > index[x]:
                        y = idom[y]
                new = x
            if idom.get(b) != new:
                idom[b] = new
                changed = True
    return idom, order


@dataclass
class SassFunction:
    mangled: str
    arch: str
    instrs: List[Instr] = field(default_factory=list)

    def count(self) -> int:
        return sum(1 for i in self.instrs if i.opcode != "NOP")

    def blocks(self) -> Tuple[Dict[int, List[Instr]], Dict[int, List[int]]]:
        """Basic blocks (by first address) and their successors."""
        if not self.instrs:
            return {}, {}
        leaders = {self.instrs[0].addr}
        addrs = [i.addr for i in self.instrs]
        for k, ins in enumerate(self.instrs):
            nxt = addrs[k + 1] if k + 1 < len(addrs) else None
            out = _successors(ins, nxt)
            if out is not None:
                leaders.update(out)
                if nxt is not None:
                    leaders.add(nxt)
        blocks: Dict[int, List[Instr]] = {}
        succ: Dict[int, List[int]] = {}
        current: Optional[int] = None
        for k, ins in enumerate(self.instrs):
            if ins.addr in leaders:
                if current is not None and current not in succ:
                    succ[current] = [ins.addr]  # fell into a leader
                current = ins.addr
                blocks[current] = []
            blocks[current].append(ins)
            nxt = addrs[k + 1] if k + 1 < len(addrs) else None
            out = _successors(ins, nxt)
            if out is not None:
                succ[current] = [a for a in out if a in leaders]
        for b in blocks:
            succ.setdefault(b, [])
            succ[b] = [a for a in succ[b] if a in blocks]
        return blocks, succ

    def loops(self) -> List[Loop]:
        """The natural loops of the control-flow graph (see the module's docstring), one per
        header, largest first."""
        blocks, succ = self.blocks()
        if not blocks:
            return []
        idom, order = _dominators(succ, self.instrs[0].addr)
        reachable = set(order)

        def dominates(h: int, b: int) -> bool:
            while True:
                if b == h:
                    return True
                if idom[b] == b:
                    return False
                b = idom[b]

        preds: Dict[int, List[int]] = {b: [] for b in reachable}
        for b in reachable:
            for nxt in succ[b]:
                if nxt in reachable:
                    preds[nxt].append(b)
        bodies: Dict[int, set] = {}
        for b in order:
            for h in succ[b]:
                if h in reachable and dominates(h, b):  # a back edge b -> h
                    body = bodies.setdefault(h, {h})
                    work = [b]
                    while work:
                        x = work.pop()
                        if x not in body:
                            body.add(x)
                            work.extend(preds[x])
        out = [Loop(h, frozenset(i.addr for x in body for i in blocks[x] if i.opcode != "NOP"))
               for h, body in bodies.items()]
        return sorted(out, key=lambda lp: (-lp.instructions, lp.header))

    def row_loop(self) -> Optional[Loop]:
        loops = self.loops()
        return loops[0] if loops else None

    def inner_instructions(self, outer: Loop) -> int:
        """Instructions of `outer` that lie in loops nested in it."""
        inner = set()
        for lp in self.loops():
            if lp.header != outer.header and lp.addrs <= outer.addrs:
                inner |= lp.addrs
        return len(inner)


_FUNC = re.compile(r"^\s*Function : (\S+)\s*$", re.MULTILINE)
_ARCH = re.compile(r"^\s*arch = (sm_\w+)\s*$", re.MULTILINE)
_INSTR = re.compile(r"/\*([0-9a-f]{4,})\*/\s+([^;]*?)\s*;")


def _branch_target(text: str) -> Optional[int]:
    """The address a BRA or CALL goes to (its last hexadecimal operand), or None."""
    m = re.search(r"\b(?:BRA|CALL)\S*\s+(.*)$", text)
    found = re.findall(r"0x([0-9a-f]+)", m.group(1)) if m else []
    return int(found[-1], 16) if found else None


def parse_sass(text: str) -> List[SassFunction]:
    """cuobjdump -sass output -> its functions, with the architecture of the ELF each lies in."""
    marks = sorted([(m.start(), "arch", m.group(1)) for m in _ARCH.finditer(text)] +
                   [(m.start(), "func", m.group(1)) for m in _FUNC.finditer(text)])
    funcs: List[SassFunction] = []
    arch = "?"
    for k, (pos, kind, value) in enumerate(marks):
        if kind == "arch":
            arch = value
            continue
        end = marks[k + 1][0] if k + 1 < len(marks) else len(text)
        f = SassFunction(value, arch)
        for m in _INSTR.finditer(text, pos, end):
            f.instrs.append(Instr(int(m.group(1), 16), m.group(2)))
        funcs.append(f)
    return funcs


def disassemble(obj: str) -> str:
    tool = find_tool("cuobjdump")
    if tool is None:
        raise RuntimeError("cuobjdump not found (CUDA toolkit, or pip install nvidia-cuda-cuobjdump)")
    return subprocess.run([tool, "-sass", obj], capture_output=True, text=True, check=True, timeout=600).stdout


# ---- template arguments and traffic ---------------------------------------------------------------


def split_template(demangled_short: str) -> Tuple[str, List[str]]:
    """'k<float, 4, 8>' -> ('k', ['float', '4', '8']) (top-level commas only)."""
    m = re.match(r"^([\w:]+)<(.*)>$", demangled_short)
    if not m:
        return demangled_short, []
    args, depth, cur = [], 0, ""
    for ch in m.group(2):
        if ch in "<(":
            depth += 1
        elif ch in ">)":
            depth -= 1
        if ch == "," and depth == 0:
            args.append(cur.strip())
            cur = ""
        else:
            cur += ch
    args.append(cur.strip())
    return m.group(1), args


def declared_parameters(headers: str = CUDA_HEADERS) -> Dict[str, List[str]]:
    """kernel name -> the names of its template parameters, from `template <...> __global__ ... NAME(`
    in the CUDA headers (e.g. {'forward_rows_kernel': ['T', 'VEC', 'ITEMS']})."""
    out: Dict[str, List[str]] = {}
    for path in sorted(glob.glob(os.path.join(headers, "*.cuh"))):
        with open(path) as f:
            text = re.sub(r"//[^\n]*", "", f.read())
        for m in re.finditer(r"\btemplate\s*<", text):
            depth, i = 1, m.end()
            while i < len(text) and depth:
                depth += {"<": 1, ">": -1}.get(text[i], 0)
                i += 1
            params = text[m.end():i - 1]
            decl = re.match(r"\s*__global__\b[^;{]*?\b(\w+_kernel)\s*\(", text[i:])
            if decl is None:
                continue
            names = []
            for p in _split_commas(params):
                p = p.split("=", 1)[0].strip()
                names.append(p.split()[-1] if p else "")
            out[decl.group(1)] = names
    return out


def _split_commas(s: str) -> List[str]:
    out, depth, cur = [], 0, ""
    for ch in s:
        depth += {"<": 1, "(": 1, ">": -1, ")": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    return out + [cur]


def _int_arg(a: str) -> Optional[int]:
    m = re.fullmatch(r"\(?(?:unsigned|int|long|unsigned int)?\)?\s*(-?\d+)[uUlL]*", a)
    return int(m.group(1)) if m else None


@dataclass
class Traffic:
    element: str
    vec: int
    items: int
    read: int  # bytes per thread per row iteration
    written: int


def kernel_traffic(short: str, declared: Dict[str, List[str]]) -> Optional[Traffic]:
    """The bytes one thread moves per row iteration (module docstring), None for a kernel without
    VEC and ITEMS; raises ValueError where the template arguments do not fit the pattern."""
    name, args = split_template(short)
    params = declared.get(name)
    if params is not None and len(params) == len(args):
        if "VEC" not in params and "ITEMS" not in params:
            return None
        if not ("VEC" in params and "ITEMS" in params):
            raise ValueError(f"{short}: declared with template parameters {params}: VEC or ITEMS missing")
        vec, items = _int_arg(args[params.index("VEC")]), _int_arg(args[params.index("ITEMS")])
    else:
        numbers = [v for v in map(_int_arg, args[1:]) if v is not None]
        if len(numbers) == 0 and "rows" not in name and "chunk" not in name:
            return None
        if len(numbers) != 2:
            raise ValueError(f"{short}: its declaration was not found in {CUDA_HEADERS} and it has "
                             f"{len(numbers)} integer template arguments, not exactly 2 (VEC, ITEMS): "
                             f"update bench/cuda_sass.py")
        vec, items = numbers
    element = args[0] if args else ""
    if element not in ELEMENT_SIZES:
        raise ValueError(f"{short}: the first template argument {element!r} is not an element type "
                         f"{sorted(ELEMENT_SIZES)}")
    size = ELEMENT_SIZES[element]
    if vec is None or items is None or vec <= 0 or items <= 0 or items % vec or vec * size > 16:
        raise ValueError(f"{short}: VEC={vec}, ITEMS={items} for {element} do not fit "
                         f"(ITEMS a multiple of VEC, VEC * sizeof(T) <= 16)")
    row = items * size
    if name.startswith("forward"):
        return Traffic(element, vec, items, row, 0 if "stats" in name else row)
    if name.startswith("backward"):
        return Traffic(element, vec, items, 2 * row, 0 if "sums" in name else row)
    raise ValueError(f"{short}: no traffic model for this kernel (forward_* or backward_*): update bench/cuda_sass.py")


# ---- the report -----------------------------------------------------------------------------------


@dataclass
class KernelRow:
    arch: str
    kernel: str  # short demangled name
    registers: int
    stack: int
    spill_stores: int
    spill_loads: int
    total: int
    loop: int
    inner: int
    whole: bool
    traffic: Optional[Traffic]

    @property
    def spills(self) -> bool:
        return self.spill_stores > 0 or self.spill_loads > 0

    @property
    def per_16_bytes(self) -> Optional[float]:
        t = self.traffic
        return None if t is None else self.loop * 16 / (t.read + t.written)

    @property
    def bound(self) -> Optional[float]:
        """The issue-rate bound on bandwidth, bytes/s (H100)."""
        t = self.traffic
        return None if t is None else ISSUE_RATE / (self.loop / (t.read + t.written))


def analyse(ptxas_report: str, sass_text: str, declared: Optional[Dict[str, List[str]]] = None) -> List[KernelRow]:
    declared = declared_parameters() if declared is None else declared
    entries = {(e.mangled, e.arch): e for e in parse_ptxas(ptxas_report, demangled=False)}
    funcs = parse_sass(sass_text)
    names = demangle([f.mangled for f in funcs])
    rows = []
    for f in funcs:
        full = names[f.mangled]
        if not is_lnorm_kernel(full):
            continue
        e = entries.get((f.mangled, f.arch))
        if e is None:
            raise ValueError(f"{full} ({f.arch}) is in the SASS but not in ptxas's report")
        short = short_name(full)
        loop = f.row_loop()
        count = loop.instructions if loop else f.count()
        rows.append(KernelRow(f.arch, short, e.registers, e.stack, e.spill_stores, e.spill_loads, f.count(), count,
                              f.inner_instructions(loop) if loop else 0, loop is None,
                              kernel_traffic(short, declared)))
    order = {"forward_rows_kernel": 0, "backward_rows_kernel": 1}
    elem = {"__nv_bfloat16": 0, "__half": 1, "float": 2, "double": 3}

    def key(r: KernelRow):
        name, args = split_template(r.kernel)
        t = r.traffic
        return (r.arch, order.get(name, 2 if t else 3), name, elem.get(args[0] if args else "", 9),
                t.vec if t else 0, r.kernel)

    return sorted(rows, key=key)


def markdown(rows: List[KernelRow]) -> str:
    head = ("| arch | kernel | regs | stack B | spill st/ld B | SASS | row loop | inner | B/thread/iter | "
            "instr per 16 B | issue bound (H100) | of 3.0 TB/s copy |")
    lines = [head, "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        spill = f"{r.spill_stores}/{r.spill_loads}"
        if r.spills:
            spill = f"**{spill}**"
        loop = f"{r.loop}" + (" (whole kernel)" if r.whole else "")
        if r.traffic is None:
            per = "—"
            io = bound = ratio = "—"
        else:
            t = r.traffic
            io = f"{t.read}+{t.written}"
            per = f"{r.per_16_bytes:.0f}"
            bound = f"{r.bound / 1e12:.2f} TB/s"
            ratio = f"{r.bound / H100_COPY:.2f}"
        lines.append(f"| {r.arch} | `{r.kernel}` | {r.registers} | {r.stack} | {spill} | {r.total} | {loop} | "
                     f"{r.inner} | {io} | {per} | {bound} | {ratio} |")
    return "\n".join(lines) + "\n"


def section(rows: List[KernelRow], argv: Sequence[str], archs: Sequence[str], seconds: float,
            common: bool = False) -> str:
    nvcc = find_tool("nvcc")
    version = ""
    if nvcc:
        v = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout
        m = re.search(r"release ([\d.]+)", v)
        version = f"nvcc {m.group(1)}" if m else "nvcc"
    commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    spilling = sum(1 for r in rows if r.spills)
    common_note = (
        "**The common path**: built with `LNORM_CUDA_SASS_COMMON_PATH`, the row kernels keep only what most "
        "rows execute (rows held in registers, no scaled second pass), so a row kernel's row loop is close to "
        "the instructions one row iteration executes (the partial-pack branches still count). "
        if common else "")
    return "\n".join([
        COMMON_SECTION if common else SECTION,
        "",
        common_note +
        f"From `python bench/cuda_sass.py {' '.join(argv)}` on {datetime.date.today().isoformat()} "
        f"({version}, {', '.join(archs)}, commit {commit.stdout.strip() or '?'}; nvcc took {seconds:.0f} s): "
        "static counts from `ptxas -v` and `cuobjdump -sass`, no GPU involved. **row loop**: the SASS "
        "instructions of the kernel's largest loop (a natural loop of its control-flow graph), each counted once: both "
        "norms' paths where the kernel takes `rms` at run time (the backward's; the forward row kernels are compiled per norm and fused add), cold paths too (overflow re-pass, rows "
        "longer than the registers hold, partial packs), so it overstates what one iteration executes; "
        "**inner**: those of them inside nested loops. **B/thread/iter**: bytes one thread reads+writes per "
        "row iteration (ITEMS x sizeof(T) per array: forward x, y; backward x, dy, dx). **issue bound**: "
        "132 SMs x 4 schedulers x 1.755 GHz x 32 threads / (row-loop instructions per byte per thread), "
        "against the 3.0 TB/s of an H100 device-to-device copy. Read both as relative figures (kernel "
        "against kernel, one version against the next), not as predicted speeds. "
        f"{spilling} of {len(rows)} kernels spill (**bold**). Method: the docstring of bench/cuda_sass.py.",
        "",
        markdown(rows),
    ])


def update_section(path: str, text: str, title: str = SECTION) -> None:
    """Replace (or append) the section `title` in `path`, creating the file with a title when missing."""
    if os.path.exists(path):
        with open(path) as f:
            old = f.read()
    else:
        old = (f"{TITLE}\n\nlnorm's CUDA results: `bench/bench_cuda.py` appends one section per GPU run; "
               "`bench/cuda_sass.py` keeps one static section.\n\n")
    start = old.find(title + "\n")
    if start >= 0:
        nxt = re.search(r"^## ", old[start + len(title):], re.MULTILINE)
        end = start + len(title) + nxt.start() if nxt else len(old)
        new = old[:start] + text.rstrip("\n") + "\n\n" + old[end:]
    else:
        new = old.rstrip("\n") + "\n\n" + text.rstrip("\n") + "\n"
    with open(path, "w") as f:
        f.write(new.rstrip("\n") + "\n")


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", action="append", help="sm_XX, repeatable (default sm_90)")
    p.add_argument("--types", default="", help=f"comma list of {sorted(TYPE_KEYS)} (default: all)")
    p.add_argument("--quick", action="store_true", help="bf16 kernels only, sm_90 unless --arch")
    p.add_argument("--out", default="", help=f"write the section into this markdown file (e.g. {DEFAULT_OUT})")
    p.add_argument("--common-path", action="store_true",
                   help="build with LNORM_CUDA_SASS_COMMON_PATH: row loops hold only what most rows execute")
    p.add_argument("--keep", default="", help="keep the source, object, ptxas report and SASS in this folder")
    args = p.parse_args(argv)
    archs = args.arch or ["sm_90"]
    for a in archs:
        if not re.fullmatch(r"sm_\d+a?", a):
            p.error(f"--arch: {a!r} is not sm_XX")
    keys = ["bf16"] if args.quick and not args.types else [t.strip() for t in args.types.split(",") if t.strip()]
    for k in keys:
        if k not in TYPE_KEYS:
            p.error(f"--types: {k!r} is not one of {sorted(TYPE_KEYS)}")
    for tool in ("nvcc", "cuobjdump"):
        if find_tool(tool) is None:
            print(f"cuda_sass.py: {tool} not found (CUDA toolkit; cuobjdump also as pip install "
                  "nvidia-cuda-cuobjdump)", file=sys.stderr)
            return 2
    work = args.keep or tempfile.mkdtemp(prefix="lnorm_sass_")
    os.makedirs(work, exist_ok=True)
    try:
        obj, report, seconds = compile_kernels(instantiation_source([TYPE_KEYS[k] for k in keys]), archs, work,
                                               defines=["LNORM_CUDA_SASS_COMMON_PATH"] if args.common_path else [])
        sass = disassemble(obj)
        if args.keep:
            for name, text in (("ptxas.txt", report), ("sass.txt", sass)):
                with open(os.path.join(work, name), "w") as f:
                    f.write(text)
        rows = analyse(report, sass)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    if not rows:
        print("cuda_sass.py: no lnorm kernel found in the SASS", file=sys.stderr)
        return 1
    text = section(rows, argv, archs, seconds, common=args.common_path)
    print(text)
    if args.out:
        title = COMMON_SECTION if args.common_path else SECTION
        update_section(args.out, text, title)
        print(f"wrote the section '{title}' of {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
