"""The shell conventions (utils/parse_options.sh, tools/setup.sh) and device selection."""
import importlib.util
import re
import subprocess
from pathlib import Path

import pytest
import torch

from tasu.device import DeviceError, distributed_backend, resolve_device

ROOT = Path(__file__).resolve().parents[1]


def run_script(tmp_path, body, *args, timeout=None):
    """Run a bash script that declares options, sources parse_options.sh, then runs ``body``."""
    script = tmp_path / "prog.sh"
    script.write_text(
        "#!/usr/bin/env bash\nset -euo pipefail\n"
        'stage=1\nstop_stage=100\nuse_lora=false\nencoder_path=""\n'
        "extra_opts=()\n"   # an empty array before the options: "unbound variable" under set -u
        'help_message="Usage: prog.sh [--stage N] [--use_lora true|false]"\n'
        f". {ROOT}/utils/parse_options.sh\n{body}\n")
    return subprocess.run(["bash", str(script), *args], capture_output=True, text=True, timeout=timeout)


def test_options_set_declared_variables_with_dashes_or_underscores(tmp_path):
    out = run_script(tmp_path, 'echo "$stage $stop_stage $use_lora [$encoder_path] $*"',
                     "--stage", "3", "--stop-stage", "5", "--use_lora", "true",
                     "--encoder_path", "/m/Sense Voice", "rest", "--not-parsed")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "3 5 true [/m/Sense Voice] rest --not-parsed"


def test_unknown_option_is_an_error(tmp_path):
    out = run_script(tmp_path, "echo ran", "--stgae", "3")
    assert out.returncode == 1
    assert "unknown option '--stgae'" in out.stderr
    assert "ran" not in out.stdout
    # the environment's variables are set too, but are no options: --PATH /x broke every command after it
    out = run_script(tmp_path, "echo ran", "--PATH", "/x")
    assert (out.returncode, out.stderr) == (1, "prog.sh: invalid option '--PATH'\n")


def test_the_script_s_own_variables_are_no_options(tmp_path):
    out = run_script(tmp_path, "echo ran", "--help_message", "x")
    assert (out.returncode, out.stdout) == (1, "") and "unknown option '--help_message'" in out.stderr
    out = run_script(tmp_path, "echo ran", "--_po_kind", "x")
    assert (out.returncode, out.stdout) == (1, "") and "invalid option '--_po_kind'" in out.stderr


def test_every_variable_a_script_sets_before_its_options_is_one_it_documents():
    """Every lower-case variable set before parse_options.sh is an option. One the script keeps for
    itself (--invocation was written into the re-run scripts, --tools_dir chose a tasu binary) was
    taken on the command line; such a variable is named with a leading _."""
    candidates = [*ROOT.glob("egs/*/*.sh"), *ROOT.glob("egs/*/local/*.sh"), *ROOT.glob("utils/*.sh"),
                  *ROOT.glob("tools/*.sh")]
    scripts = [p for p in candidates if "parse_options.sh" in p.read_text() and p.name != "parse_options.sh"]
    assert len(scripts) >= 10
    for script in scripts:
        text = script.read_text()
        before = text[:re.search(r"^\s*\. .*parse_options\.sh", text, re.M).start()]
        for name in re.findall(r"^([a-z][a-z0-9_]*)=", before, re.M):
            if name != "help_message":
                assert f"--{name}" in text, f"{script.relative_to(ROOT)}: {name} is an option --help does not list"


def test_boolean_option_accepts_only_true_or_false(tmp_path):
    out = run_script(tmp_path, "echo ran", "--use_lora", "yes")
    assert out.returncode == 1
    assert "takes true or false, not 'yes'" in out.stderr


def test_whole_number_option_accepts_only_a_whole_number(tmp_path):
    for bad in ("x", "3.5", "", "1 2"):
        out = run_script(tmp_path, "echo ran", "--stage", bad)
        assert (out.returncode, out.stdout) == (1, "")
        assert out.stderr.splitlines() == [f"prog.sh: option '--stage' takes a whole number, not '{bad}'"]
    assert run_script(tmp_path, 'echo "$stage"', "--stage", "-2").stdout == "-2\n"
    # a variable declared empty or as text takes anything, also after a number has been given to it
    assert run_script(tmp_path, 'echo "$encoder_path"', "--encoder_path", "12").stdout == "12\n"
    assert run_script(tmp_path, 'echo "$encoder_path"', "--encoder_path", "1", "--encoder_path", "1 2").stdout \
        == "1 2\n"
    (tmp_path / "opts.sh").write_text("encoder_path=3\nuse_lora=true\n")
    out = run_script(tmp_path, 'echo "$encoder_path"', "--config", str(tmp_path / "opts.sh"), "--encoder_path", "x")
    assert (out.returncode, out.stdout) == (0, "x\n")
    out = run_script(tmp_path, "echo ran", "--config", str(tmp_path / "opts.sh"), "--stage", "x")
    assert out.stderr == "prog.sh: option '--stage' takes a whole number, not 'x'\n"


def test_missing_value_and_equals_form_are_errors(tmp_path):
    assert "needs a value" in run_script(tmp_path, "true", "--stage").stderr
    assert "not '--stage=3'" in run_script(tmp_path, "true", "--stage=3").stderr


def test_config_file_is_sourced_in_order(tmp_path):
    conf = tmp_path / "opts.sh"
    conf.write_text("stage=4\nstop_stage=6\n")
    out = run_script(tmp_path, 'echo "$stage $stop_stage"', "--config", str(conf), "--stage", "5")
    assert out.stdout.strip() == "5 6"
    missing = run_script(tmp_path, "true", "--config", str(tmp_path / "nope.sh"))
    assert missing.returncode == 1 and "does not exist" in missing.stderr
    (tmp_path / "train.yaml").write_text("encoder:\n  path: x\n")   # sourced, it ran 'encoder:' as a command
    out = run_script(tmp_path, "echo ran", "--config", str(tmp_path / "train.yaml"))
    assert out.returncode == 1 and out.stdout == "" and "--config takes a shell file of name=value lines, not " \
        f"the YAML '{tmp_path / 'train.yaml'}'" in out.stderr


def test_config_file_values_get_the_command_line_s_checks(tmp_path):
    """A --config file's 'use_lora=True' ran 'True' as a command at each test of it (the stage it guards
    skipped, exit 0), and 'yes' ran yes forever: its values are checked as the command line's are."""
    conf = tmp_path / "opts.sh"
    for text, error in (("use_lora=True\n", "option 'use_lora' takes true or false, not 'True'"),
                        ("stage=2\nuse_lora=yes\n", "option 'use_lora' takes true or false, not 'yes'"),
                        ("stage=x\n", "option 'stage' takes a whole number, not 'x'"),
                        ("stop_stage=\n", "option 'stop_stage' takes a whole number, not ''"),
                        ("stgae=3\n", "'stgae' is no option of prog.sh (see --help)")):   # as --stgae 3 is
        conf.write_text(text)
        out = run_script(tmp_path, "echo ran", "--config", str(conf), timeout=30)
        assert (out.returncode, out.stdout) == (1, ""), text
        assert out.stderr.splitlines() == [f"prog.sh: --config {conf}: {error}"], text
    # a value the command line gives later still wins over the file's (checked at the file, not after)
    conf.write_text("use_lora=true\nstage=3\nencoder_path=x\n")
    out = run_script(tmp_path, 'echo "$stage $use_lora $encoder_path"', "--config", str(conf), "--stage", "4")
    assert (out.returncode, out.stdout) == (0, "4 true x\n"), out.stderr


def test_help_prints_the_help_message(tmp_path):
    out = run_script(tmp_path, "echo ran", "--help")
    assert out.returncode == 0
    assert out.stdout.strip() == "Usage: prog.sh [--stage N] [--use_lora true|false]"


def test_setup_rejects_unknown_device_and_npu_without_cann():
    bad = subprocess.run(["bash", str(ROOT / "tools/setup.sh"), "--device", "tpu"],
                         capture_output=True, text=True)
    assert bad.returncode == 1 and "--device must be auto, cpu, cuda or npu, not 'tpu'" in bad.stderr
    bad = subprocess.run(["bash", str(ROOT / "tools/setup.sh"), "--device", "cpu", "--with", "kaldi"],
                         capture_output=True, text=True)
    assert bad.returncode == 1 and "--with must be espnet (or empty), not 'kaldi'" in bad.stderr
    env = {"PATH": "/usr/bin:/bin"}
    npu = subprocess.run(["bash", str(ROOT / "tools/setup.sh"), "--device", "npu", "--system_packages", "false"],
                         capture_output=True, text=True, env=env)
    assert npu.returncode == 1 and "needs the Ascend CANN toolkit" in npu.stderr


@pytest.mark.parametrize("df_body,error", [
    # one GiB free, as df -Pk prints it: stop before anything is made
    ("echo 'Filesystem 1024-blocks Used Available Capacity Mounted on'\necho '/dev/x 1000000000 998951424 1048576 100% /'",
     "tools/venv (CPU torch) needs about 3 GiB free beside {tools}; 1 GiB are: free some and re-run"),
    # df that cannot tell: no check, so set-up goes on (to the interpreter check, here a python that fails)
    ("echo 'df: cannot read table of mounted file systems' >&2\nexit 1", "false is older than Python 3.11"),
])
def test_setup_stops_before_an_install_that_cannot_fit(tmp_path, df_body, error):
    """With too little disk, setup.sh says so in one line and creates nothing (pip would stop half-way);
    where df gives no number the check steps aside rather than stopping the set-up."""
    for name in ("tools/setup.sh", "tools/constraints.txt", "tools/requirements.txt",
                 "utils/parse_options.sh", "setup.py"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes((ROOT / name).read_bytes())
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "df").write_text(f"#!/bin/sh\n{df_body}\n")
    (fake_bin / "df").chmod(0o755)
    out = subprocess.run(["bash", str(tmp_path / "tools/setup.sh"), "--device", "cpu", "--system_packages", "false",
                          "--python", "false"],
                         capture_output=True, text=True, env={"PATH": f"{fake_bin}:/usr/bin:/bin"})
    assert out.returncode == 1
    assert out.stderr.splitlines() == ["setup.sh: error: " + error.format(tools=tmp_path / "tools")]
    assert not (tmp_path / "tools/venv").exists()


@pytest.mark.parametrize("free_kib,calls", [
    (1048576 * 40, ["setup.sh --with espnet", "python -m pytest TASU_REQUIRE_ESPNET=1"]),
    (1048576 * 14, ["setup.sh ", "python -m pytest TASU_REQUIRE_ESPNET="]),
])
def test_ci_makes_the_espnet_environment_only_where_it_fits(tmp_path, free_kib, calls):
    """.ci/run with stand-ins for setup.sh and the venv's python: which it calls, with what."""
    (tmp_path / ".ci").mkdir()
    (tmp_path / ".ci/run").write_bytes((ROOT / ".ci/run").read_bytes())
    log = tmp_path / "calls"
    for name, body in (("tools/setup.sh", f'echo "setup.sh $*" >> {log}'),
                       ("tools/venv/bin/python", f'echo "python $* TASU_REQUIRE_ESPNET=${{TASU_REQUIRE_ESPNET:-}}" >> {log}'),
                       ("bin/df", "echo 'Filesystem 1024-blocks Used Available Capacity Mounted on'\n"
                                  f"echo '/dev/x 100000000 1 {free_kib} 1% /'")):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(f"#!/bin/sh\n{body}\n")
        (tmp_path / name).chmod(0o755)
    out = subprocess.run(["bash", str(tmp_path / ".ci/run")], capture_output=True, text=True,
                         env={"PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert log.read_text().splitlines() == calls
    assert ("under the 15 the two environments need" in out.stdout) == (free_kib < 1048576 * 15)


@pytest.mark.skipif(importlib.util.find_spec("torch_npu") is not None, reason="torch_npu is installed")
def test_npu_without_torch_npu_is_a_clear_error():
    with pytest.raises(DeviceError, match=r"needs torch_npu.*tools/setup.sh --device npu"):
        resolve_device("npu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_cuda_without_gpu_is_a_clear_error():
    with pytest.raises(DeviceError, match="sees no CUDA GPU"):
        resolve_device("cuda")


def test_device_names_and_backends():
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(DeviceError, match="unknown device 'gpu'"):
        resolve_device("gpu")
    assert distributed_backend(torch.device("cpu")) == "gloo"
    assert distributed_backend(torch.device("cuda", 0)) == "nccl"


def test_cpu_device_flushes_denormal_floats():
    """resolve_device("cpu") turns on flush-to-zero: a denormal float counts as 0 in arithmetic."""
    if not torch.set_flush_denormal(False):
        pytest.skip("this CPU cannot flush denormals")
    try:
        denormal = torch.tensor([1e-39])   # below float32's smallest normal number, 1.2e-38
        assert (denormal * 1.0).item() != 0.0
        assert resolve_device("cpu") == torch.device("cpu")
        assert (denormal * 1.0).item() == 0.0
    finally:
        torch.set_flush_denormal(False)


def test_tasu_command_is_installed():
    out = subprocess.run(["tasu", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    assert "validate" in out.stdout and "simulate" in out.stdout


def test_every_package_tasu_imports_is_a_requirement_of_setup_py():
    """``pip install .`` must give what the code imports: rapidfuzz (every simulation) was missing, and
    ``tasu simulate`` ended in ModuleNotFoundError. Modules of no installed distribution (torch_npu,
    espnet2: their own environments) are left out."""
    import ast
    import re
    import sys
    from importlib.metadata import packages_distributions

    modules = set()
    for path in (ROOT / "tasu").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                modules |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    installed = packages_distributions()
    wanted = {installed[m][0] for m in modules - set(sys.stdlib_module_names) - {"tasu"} if m in installed}

    def norm(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()
    setup_py = (ROOT / "setup.py").read_text(encoding="utf-8")
    required = {norm(m) for m in re.findall(r'"([A-Za-z0-9_.-]+)(?:\[[^]]*\])?\s*(?:[<>=!~][^"]*)?"', setup_py)}
    assert {"torch", "rapidfuzz", "deepspeed"} <= {norm(d) for d in wanted}   # the scan finds them
    assert sorted(d for d in wanted if norm(d) not in required) == []
