"""benchmarks/gpu_suite.sh, the one GPU command: its plan must fit the device budget and call what exists.

A GPU session has 15 minutes of device time and 10 minutes a command; a stale flag or path in the
suite would waste that run, so the plan is checked here, on the CPU, against the scripts it calls.
"""
import ast
import os
import re
import shlex
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUITE = os.path.join(ROOT, "benchmarks", "gpu_suite.sh")
TEST_FILES = set(os.listdir(os.path.join(ROOT, "tests")))


def _plan(*args: str) -> tuple[list[tuple[str, int, str]], int]:
    """The dry run's steps (name, limit in s, command) and its deadline in s."""
    run = subprocess.run(["bash", SUITE, "--dry-run", *args], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.strip().splitlines()
    steps = [re.match(r"(\S+)\s+(\d+)s\s+(.*)$", line).groups() for line in lines[:-1]]
    deadline = int(re.search(r"deadline (\d+)s", lines[-1]).group(1))
    return [(name, int(limit), cmd) for name, limit, cmd in steps], deadline


def test_deadline_fits_one_device_command():
    _, deadline = _plan()
    assert deadline <= 570  # the tool's 600 s command limit, with room to pack and copy back


def test_every_step_fits_the_deadline_and_the_order_puts_the_build_first():
    steps, deadline = _plan()
    names = [name for name, _, _ in steps]
    assert names[:2] == ["build", "backends"]
    assert all(10 <= limit < deadline for _, limit, _ in steps)
    assert names.index("tests_ops") < min(i for i, n in enumerate(names) if n.startswith("bench_"))


def test_the_two_test_steps_cover_every_test_file_once():
    steps, _ = _plan()
    cmds = dict((name, cmd) for name, _, cmd in steps)
    op_files = {os.path.basename(a) for a in shlex.split(cmds["tests_ops"]) if a.startswith("tests/")}
    ignored = {os.path.basename(a.split("=", 1)[1]) for a in shlex.split(cmds["tests_rest"])
               if a.startswith("--ignore=")}
    assert op_files and op_files <= TEST_FILES
    assert op_files == ignored


def test_benchmark_steps_use_flags_their_scripts_accept():
    steps, _ = _plan()
    benches = [cmd for name, _, cmd in steps if name.startswith("bench_") or name == "sanitizer"]
    assert len(benches) == 8
    for cmd in benches:
        argv = shlex.split(cmd)
        script = next(a for a in argv if a.endswith(".py"))
        flags = [a for a in argv[argv.index(script) + 1:] if a.startswith("--")]
        help_text = subprocess.run([sys.executable, os.path.join(ROOT, script), "--help"], capture_output=True,
                                   text=True, timeout=120, cwd=ROOT).stdout
        assert flags and all(flag in help_text for flag in flags), (script, flags)


def test_quick_takes_fewer_rounds():
    full = {name: cmd for name, _, cmd in _plan()[0]}
    quick = {name: cmd for name, _, cmd in _plan("--quick")[0]}
    assert "--rounds 10" in full["bench_ops"] and "--rounds 3" in quick["bench_ops"]


def test_unknown_option_is_refused():
    run = subprocess.run(["bash", SUITE, "--dry-runn"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "unknown option --dry-runn" in run.stderr


def test_steps_option_keeps_the_plan_order_and_refuses_unknown_steps():
    steps, _ = _plan("--steps=profile_ncu,bench_ops")
    assert [name for name, _, _ in steps] == ["bench_ops", "profile_ncu"]
    run = subprocess.run(["bash", SUITE, "--dry-run", "--steps=bench_opz"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "unknown step bench_opz" in run.stderr


def test_profile_step_runs_ncu_on_the_kernel_cases_with_the_clocks_left_alone():
    cmd = dict((name, cmd) for name, _, cmd in _plan()[0])["profile_ncu"]
    argv = shlex.split(cmd)
    assert os.path.basename(argv[0]) == "ncu" and argv[argv.index("--clock-control") + 1] == "none"
    assert argv[argv.index("--profile-from-start") + 1] == "off"  # only the launches inside the script's range
    script = next(a for a in argv if a.endswith(".py"))
    assert os.path.exists(os.path.join(ROOT, script))
    run = subprocess.run([sys.executable, os.path.join(ROOT, script), "--device", "cpu", "--small"],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    assert "channel_distortion fwd+bwd" in run.stdout and "sparse_conv fwd vgg.conv3_x 90%" in run.stdout


def test_sanitizer_step_calls_every_kernel_on_the_cpu_and_triton_backends():
    """The sanitizer step's script, with its calls on CPU tensors (C++ ops; Triton interpreted): a broken
    call there would leave compute-sanitizer with nothing to check on the GPU."""
    cmd = dict((name, cmd) for name, _, cmd in _plan()[0])["sanitizer"]
    script = next(a for a in shlex.split(cmd) if a.endswith(".py"))
    from anp_kernels import _backend

    env = {**os.environ, "TRITON_INTERPRET": "1"}
    # Triton interpreted where this Triton/NumPy pair can run it (anp_kernels._backend refuses the others)
    backends = ["cpu"] + (["triton"] if _backend.missing("triton", "cpu") is None else [])
    run = subprocess.run([sys.executable, os.path.join(ROOT, script), "--device", "cpu", "--backend", *backends],
                         capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    for backend in backends:
        line = next(line for line in run.stdout.splitlines() if line.startswith(backend + " "))
        assert len(ast.literal_eval(line.split(" ", 1)[1])) == 6, line  # 3 dtypes x 2 layouts


def test_toolchain_check_parses_and_names_a_bad_option():
    """benchmarks/gpu_toolchain.sh needs the package index and 4 GB, so CI only checks that it parses and
    refuses what it does not know before installing anything."""
    script = os.path.join(ROOT, "benchmarks", "gpu_toolchain.sh")
    assert subprocess.run(["bash", "-n", script], capture_output=True).returncode == 0
    bad = subprocess.run(["bash", script, "--bogus"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "unknown option --bogus" in bad.stderr
