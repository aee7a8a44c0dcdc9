"""Build llama.cpp's own tools (`llama-batched-bench`, `llama-server`) from the llama.cpp sources that the
installed llama-cpp-python's source package vendors, so the benchmarks compare forgeflow with the very engine
version it embeds.

    .venv/bin/python bench/llamacpp_tools.py [--jobs 2] [--nice 10] [--rebuild]

The source package is fetched with `pip download --no-binary :all: --no-deps llama-cpp-python==<installed>`
(pip's cache answers if it holds it) into ~/.cache/forgeflow-bench/llamacpp-<version>/, unpacked, configured
with CMake and only the two targets built; the binaries are cached there and their paths printed. A second run
prints the cached paths at once.

Build flags, chosen to match the wheel this machine built when it installed llama-cpp-python (its
`llama_print_system_info()` reports the host's AVX/AVX2/AVX512/VNNI/BF16 set, OpenMP, llamafile and repack,
which is GGML_NATIVE's build): GGML_NATIVE=ON, GGML_OPENMP=ON (the default), Release, shared ggml/llama
libraries off so the tools carry their own, LLAMA_CURL=OFF (no downloads), tests/examples/server off except
the two targets asked for. AMX is left out as the wheel left it out (the Makefile builds the wheel without it on
x86-64: llama.cpp's AMX kernels crash on virtual machines that report AMX without running it). Tools built with
other flags are built again.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

CACHE = Path(os.environ.get("FORGEFLOW_BENCH_CACHE", Path.home() / ".cache" / "forgeflow-bench"))
TARGETS = ("llama-batched-bench", "llama-server")
CMAKE_FLAGS = [
    "-DCMAKE_BUILD_TYPE=Release",
    "-DLLAMA_CURL=OFF",
    "-DGGML_NATIVE=ON",
    "-DGGML_OPENMP=ON",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=ON",  # llama-batched-bench lives under tools/ or examples/ depending on the version
    "-DLLAMA_BUILD_TOOLS=ON",
    "-DLLAMA_BUILD_SERVER=ON",
]

AMX_OFF = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"  # as the Makefile's LLAMACPP_FLAGS


def cmake_flags() -> list[str]:
    """CMAKE_FLAGS, with AMX left out where the installed wheel left it out (x86-64 only: no AMX elsewhere)."""
    import llama_cpp

    if platform.machine() == "x86_64" and b"AMX_INT8 = 1" not in llama_cpp.llama_print_system_info():
        return [*CMAKE_FLAGS, f"-DCMAKE_C_FLAGS={AMX_OFF}", f"-DCMAKE_CXX_FLAGS={AMX_OFF}"]
    return CMAKE_FLAGS


def installed_version() -> str:
    return importlib.metadata.version("llama_cpp_python")


def tool_dir(version: str | None = None) -> Path:
    return CACHE / f"llamacpp-{version or installed_version()}"


def cached_tools(version: str | None = None) -> dict[str, Path] | None:
    """The built binaries' paths, or None when they are not built yet or were built with other flags."""
    paths = {name: tool_dir(version) / "bin" / name for name in TARGETS}
    try:
        built = json.loads((tool_dir(version) / "flags.json").read_text())["cmake"]
    except (OSError, ValueError, KeyError):
        return None
    ready = built == cmake_flags() and all(p.is_file() and os.access(p, os.X_OK) for p in paths.values())
    return paths if ready else None


def _run(cmd: list[str], log, cwd: Path | None = None, nice: int = 0) -> None:
    full = (["nice", "-n", str(nice)] if nice else []) + cmd
    print("+", " ".join(cmd), file=log, flush=True)
    proc = subprocess.run(full, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode:
        raise SystemExit(f"{cmd[0]} failed (exit {proc.returncode}); see {log.name}")


def fetch_sources(version: str, work: Path, log) -> Path:
    """Download and unpack the source package; return the vendored llama.cpp folder."""
    sdists = work / "sdist"
    sdists.mkdir(parents=True, exist_ok=True)
    if not list(sdists.glob("*.tar.gz")):
        _run([sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps", "-d", str(sdists), f"llama-cpp-python=={version}"], log)
    archive = next(sdists.glob("*.tar.gz"))
    src = work / "src"
    if not src.is_dir():
        tmp = work / "src.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
        top = list(tmp.iterdir())
        (top[0] if len(top) == 1 else tmp).rename(src)  # the archive holds one llama_cpp_python-<version>/ folder
        shutil.rmtree(tmp, ignore_errors=True)
    vendored = src / "vendor" / "llama.cpp"
    if not (vendored / "CMakeLists.txt").is_file():
        raise SystemExit(f"{archive.name} has no vendor/llama.cpp/CMakeLists.txt; unpacked at {src}")
    return vendored


def build(jobs: int = 2, nice: int = 10, rebuild: bool = False) -> dict[str, Path]:
    """Build (or reuse) the tools for the installed llama-cpp-python version; return their paths."""
    version = installed_version()
    if not rebuild and (done := cached_tools(version)):
        return done
    work = tool_dir(version)
    work.mkdir(parents=True, exist_ok=True)
    with open(work / "build.log", "a") as log:
        vendored = fetch_sources(version, work, log)
        build_dir = work / "build"
        generator = ["-G", "Ninja"] if shutil.which("ninja") else []
        flags = cmake_flags()
        shutil.rmtree(build_dir, ignore_errors=True)  # CMake keeps a cache's flags over new ones
        _run(["cmake", "-S", str(vendored), "-B", str(build_dir), *generator, *flags], log, nice=nice)
        _run(["cmake", "--build", str(build_dir), "-j", str(jobs), "--target", *TARGETS], log, nice=nice)
        (work / "bin").mkdir(exist_ok=True)
        for name in TARGETS:
            found = next((p for p in build_dir.rglob(name) if p.is_file() and os.access(p, os.X_OK)), None)
            if found is None:
                raise SystemExit(f"{name} was not produced; see {log.name}")
            shutil.copy2(found, work / "bin" / name)
        (work / "flags.json").write_text(json.dumps({"version": version, "cmake": flags}, indent=1))
    return cached_tools(version) or {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2, help="parallel compile jobs (default 2)")
    parser.add_argument("--nice", type=int, default=10, help="niceness of the compiler (default 10)")
    parser.add_argument("--rebuild", action="store_true", help="build again even if the binaries are cached")
    args = parser.parse_args()
    tools = build(args.jobs, args.nice, args.rebuild)
    for name, path in tools.items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
