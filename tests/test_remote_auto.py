"""`slots: auto` / `gpus: auto` on remote nodes: the probe, its parsing, the resolution, `dptrain mpirun`.

Most tests use a fake mpiexec (a Hydra look-alike whose behaviour depends on the host name: it runs
the probe here, prints garbage, hangs, or fails like a missing Python), so every failure mode is
exercised without remote machines; the last two run the real Hydra on the two network-namespace
nodes of netns_nodes.py.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest
import yaml

import netns_nodes
from cluster.config import ConfigError, auto_resources, resolve_config
from cluster.resources import usable_cpu_count
from dist_utils import base_env
from launcher import measure as Mz
from launcher.mpirun import per_host_command
from launcher.probe import parse_report

cluster_of_two = netns_nodes.cluster_of_two
HEAVY = ("numpy", "engine", "comm", "yaml", "zmq", "msgpack", "mpi4py", "cupy")

FAKE_MPIEXEC = """#!/bin/bash
# A Hydra look-alike for one host: --version, else -f HOSTFILE -n 1 -ppn 1 [EXTRA...] PROGRAM...
if [ "$1" = "--version" ]; then echo "HYDRA build details: fake, for tests"; exit 0; fi
echo "$*" >> "$(dirname "$0")/calls.log"
host=$(cut -d: -f1 "$2")
shift 6
case "$host" in
  slow*) sleep 60 ;;
  junk*) echo "Welcome to $host"; exit 0 ;;
  nopython*) echo "[proxy:0@$host] HYDU_create_process (lib/utils/launch.c:73): execvp error on file /nope/python (No such file or directory)" >&2; exit 255 ;;
  *) exec "$@" ;;
esac
"""


@pytest.fixture
def fake_mpiexec(tmp_path):
    path = tmp_path / "bin" / "mpiexec"
    path.parent.mkdir()
    path.write_text(FAKE_MPIEXEC)
    path.chmod(0o755)
    return str(path)


def _cfg(fake, nodes, threads=1, gbs=None):
    raw = {"cluster": {"nodes": nodes, "mpi": {"mpiexec": fake}}, "job": {"threads": threads}}
    if gbs:
        raw["job"]["global_batch_size"] = gbs
    return raw


# ---------------------------------------------------------------- the probe itself
@pytest.mark.timeout(60)
def test_probe_prints_one_json_line_quickly_and_imports_nothing_heavy():
    code = ("import sys; from launcher import probe; probe.main([]); "
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))")
    r = subprocess.run([sys.executable, "-c", code], env=base_env(), capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    line, heavy = r.stdout.splitlines()
    assert heavy == "[]"
    rep = json.loads(line)
    assert rep["probe"] == "dptrain" and rep["version"] == 1
    assert isinstance(rep["hostname"], str) and rep["hostname"]
    assert rep["cpus"] == len(os.sched_getaffinity(0)) and rep["cpus_total"] == os.cpu_count()
    assert isinstance(rep["gpus"], int) and rep["gpus"] >= 0
    assert isinstance(rep["mem_total_bytes"], int) and 0 < rep["mem_available_bytes"] <= rep["mem_total_bytes"]
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "launcher.probe"], env=base_env(), capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 1
    assert time.monotonic() - t0 < 5.0          # ~0.05 s here: an interpreter start and a few syscalls
    assert parse_report(r.stdout)["cpus"] == rep["cpus"]


@pytest.mark.timeout(60)
def test_probe_counts_usable_cores_and_visible_gpus():
    if shutil.which("taskset") is None or (os.cpu_count() or 1) < 2:
        pytest.skip("needs taskset and 2 cores")
    r = subprocess.run(["taskset", "-c", "0", sys.executable, "-m", "launcher.probe"],
                       env=base_env({"CUDA_VISIBLE_DEVICES": "0,3"}), capture_output=True, text=True, timeout=30)
    rep = parse_report(r.stdout)
    assert rep["cpus"] == 1 and rep["cpus_total"] == os.cpu_count() and rep["gpus"] == 2


def test_reports_are_found_among_other_output_and_garbage_is_refused():
    good = json.dumps({"probe": "dptrain", "version": 1, "hostname": "n1", "cpus": 8, "gpus": 0,
                       "mem_total_bytes": 10, "mem_available_bytes": 5})
    assert parse_report(f"Welcome to n1\nlast login: never\n{good}\n")["cpus"] == 8
    with pytest.raises(ValueError, match="no output"):
        parse_report("")
    with pytest.raises(ValueError, match="printed no probe report.*'hello | {\"cpus\": 3}'"):
        parse_report('hello\n{"cpus": 3}\n')               # JSON, but not a probe report
    with pytest.raises(ValueError, match="printed no probe report"):
        parse_report(good[:-5])                            # cut short
    bad = json.loads(good)
    bad.update(cpus=0, gpus="1", mem_total_bytes=-1)
    del bad["hostname"]
    with pytest.raises(ValueError, match=r"bad or missing fields \(cpus, gpus, hostname, mem_total_bytes\)"):
        parse_report(json.dumps(bad))


# ---------------------------------------------------------------- the rule and the config
def test_one_rule_for_local_and_measured_nodes():
    assert auto_resources({"slots": "auto", "gpus": "auto"}, 8, 0, 2) == (4, 0)
    assert auto_resources({"slots": "auto", "gpus": "auto"}, 8, 3, 2) == (3, 3)    # one per GPU
    assert auto_resources({"slots": "auto", "gpus": 2}, 8, None, 1) == (2, 2)
    assert auto_resources({"slots": 3, "gpus": "auto"}, 8, 1, 1) == (3, 1)
    assert auto_resources({"slots": "auto", "gpus": 0}, 2, None, 4) == (1, 0)       # at least one


def test_resolve_config_measures_remote_nodes_only_once_everything_else_is_valid(monkeypatch, tmp_path):
    import cluster.resources as res
    monkeypatch.setattr(res, "usable_cpu_count", lambda: 4)
    calls = []

    def measure(cfg, indices):
        calls.append(indices)
        return {i: {"cpus": 6, "gpus": 0} for i in indices}

    nodes = [{"host": "localhost", "slots": "auto"}, {"host": "n1", "slots": "auto", "gpus": "auto"},
             {"host": "n2", "slots": 2}]
    raw = {"cluster": {"nodes": nodes}, "job": {"threads": 2, "global_batch_size": 42}}
    cfg = resolve_config(raw, base_dir=str(tmp_path), measure=measure)
    assert calls == [[1]]
    assert [(n.slots, n.gpus) for n in cfg.cluster.nodes] == [(2, 0), (3, 0), (2, 0)] and cfg.world_size == 7
    # any other error: reported with its dotted path, and nothing is measured
    with pytest.raises(ConfigError) as ei:
        resolve_config(raw, ["job.epochs=0", "cluster.nodes.2.gpus=-1"], base_dir=str(tmp_path), measure=measure)
    assert ei.value.errors == ["cluster.nodes.2.gpus: expected a non-negative integer, got -1",
                               "job.epochs: expected a positive integer, got 0"]
    assert calls == [[1]]
    # the world size is only known after measuring: its checks come then
    with pytest.raises(ConfigError) as ei:
        resolve_config(raw, ["job.global_batch_size=32"], base_dir=str(tmp_path), measure=measure)
    assert ei.value.errors == ["job.global_batch_size: 32 is not divisible by the world size 7 (sum of "
                               "cluster.nodes.*.slots, `auto` ones as measured); use a multiple such as 28 or 35"]


def test_without_a_measure_remote_auto_names_dptrain_mpirun_and_the_fix():
    with pytest.raises(ConfigError) as ei:
        resolve_config({"cluster": {"nodes": [{"host": "gpu7", "slots": "auto", "gpus": "auto"}]}})
    assert ei.value.errors == [
        "cluster.nodes.0.slots: 'auto' is measured on this machine, but node 0 is 'gpu7'; `dptrain mpirun` "
        "measures remote nodes (a probe through mpiexec), other commands cannot: give its number of workers",
        "cluster.nodes.0.gpus: 'auto' is measured on this machine, but node 0 is 'gpu7'; `dptrain mpirun` "
        "measures remote nodes (a probe through mpiexec), other commands cannot: give its number of GPUs"]


# ---------------------------------------------------------------- running the probes
def test_helper_commands_use_the_flavours_syntax_and_extra_args(tmp_path):
    cfg = {"cluster": {"mpi": {"extra_args": ["-launcher", "ssh"]}}}
    hf = str(tmp_path / "hf")
    assert per_host_command(cfg, "mpiexec", "mpich", ["a", "b"], hf) == \
        ["mpiexec", "-f", hf, "-n", "2", "-ppn", "1", "-launcher", "ssh"]
    assert open(hf).read() == "a:1\nb:1\n"
    cmd = per_host_command(cfg, "mpirun", "openmpi", ["a"], str(tmp_path / "unused"))
    assert cmd[:6] == ["mpirun", "--host", "a:1", "-np", "1", "--map-by", "node"][:6]
    assert cmd[-2:] == ["-launcher", "ssh"] and not os.path.exists(tmp_path / "unused")


@pytest.mark.timeout(60)
def test_every_host_gets_its_own_bounded_probe_and_its_own_verdict(fake_mpiexec):
    cfg = resolve_config(_cfg(fake_mpiexec, [{"host": "localhost"}]))
    t0 = time.monotonic()
    res = Mz.run_probes(cfg, ["goodA", "junkB", "slowC", "nopythonD"], timeout=2.0)
    took = time.monotonic() - t0
    assert 2.0 <= took < 10, took                  # the hung one is cut off at the deadline, not waited for
    assert res["goodA"]["cpus"] == usable_cpu_count()
    assert res["junkB"] == "it printed no probe report (output: 'Welcome to junkB')"
    assert res["slowC"].startswith("no answer within 2 s")
    assert res["nopythonD"] == ("mpiexec exited with code 255: execvp error on file /nope/python (No such file "
                                "or directory)")


def test_a_node_that_cannot_be_measured_is_named_with_the_fix(fake_mpiexec, monkeypatch):
    raw = _cfg(fake_mpiexec, [{"host": "goodA", "slots": "auto"}, {"host": "junkB", "slots": "auto", "gpus": "auto"},
                              {"host": "goneC", "slots": "auto"}])
    monkeypatch.setattr(Mz, "run_probes", lambda cfg, hosts, timeout: {
        "goodA": {"probe": "dptrain", "hostname": "a", "cpus": 2, "gpus": 0},
        "junkB": "it printed no probe report (no output)"})
    with pytest.raises(Mz.ProbeError) as ei:
        resolve_config(raw, measure=Mz.measure_remote)
    assert str(ei.value).splitlines() == [
        "dptrain: cannot measure cluster.nodes.1 (junkB) for `auto`: `python -m launcher.probe` through mpiexec "
        "failed: it printed no probe report (no output); give its slots and gpus explicitly (in the config, or "
        "e.g. `cluster.nodes.1.slots=4 cluster.nodes.1.gpus=0`)",
        "dptrain: cannot measure cluster.nodes.2 (goneC) for `auto`: `python -m launcher.probe` through mpiexec "
        "failed: no result; give its slots explicitly (in the config, or e.g. `cluster.nodes.2.slots=4`)"]


# ---------------------------------------------------------------- the command line
def _cli(tmp_path, *args, timeout=60):
    return subprocess.run([sys.executable, "-m", "launcher", *args], cwd=tmp_path, env=base_env(),
                          capture_output=True, text=True, timeout=timeout)


def _write(tmp_path, fake, nodes, threads=1):
    text = json.dumps({"cluster": {"nodes": nodes, "mpi": {"mpiexec": fake}},
                       "job": {"threads": threads, "global_batch_size": 240}, "output": {"dir": "run"}})
    (tmp_path / "c.yaml").write_text(text)     # JSON is YAML
    return "c.yaml"


@pytest.mark.timeout(120)
def test_validate_run_and_script_keep_refusing_remote_auto(tmp_path, fake_mpiexec):
    c = _write(tmp_path, fake_mpiexec, [{"host": "localhost"}, {"host": "goodA", "slots": "auto"}])
    for args in (["validate", c], ["run", c], ["script", c, "-o", "-"]):
        r = _cli(tmp_path, *args)
        assert r.returncode == 2, (args, r.stderr)
        assert ("cluster.nodes.1.slots: 'auto' is measured on this machine, but node 1 is 'goodA'; `dptrain "
                "mpirun` measures remote nodes") in r.stderr and "give its number of workers" in r.stderr
    assert not (tmp_path / "bin" / "calls.log").exists() and not (tmp_path / "run").exists()


@pytest.mark.timeout(120)
def test_mpirun_measures_prints_and_plans_with_the_result(tmp_path, fake_mpiexec):
    c = _write(tmp_path, fake_mpiexec, [{"host": "goodA", "slots": "auto", "gpus": "auto"}, {"host": "goodB"}])
    r = _cli(tmp_path, "mpirun", c, "--dry-run")
    assert r.returncode == 0, r.stderr
    n = usable_cpu_count()
    assert (f"dptrain: cluster.nodes.0 (goodA, hostname {os.uname().nodename}): slots auto -> {n} ({n} usable "
            f"core{'s' if n != 1 else ''} // job.threads 1), gpus auto -> 0; memory ") in r.stderr
    assert f"#   goodA:{n}\n#   goodB:1\n" in r.stdout
    assert len(open(tmp_path / "bin" / "calls.log").read().splitlines()) == 1    # goodB has numbers
    # other config errors first, with their paths, and nothing is probed
    os.unlink(tmp_path / "bin" / "calls.log")
    r = _cli(tmp_path, "mpirun", c, "job.epochs=0", "cluster.nodes.1.slots=-2")
    assert r.returncode == 2 and "job.epochs: expected a positive integer, got 0" in r.stderr
    assert "cluster.nodes.1.slots: expected a positive integer, got -2" in r.stderr
    assert not (tmp_path / "bin" / "calls.log").exists()


@pytest.mark.timeout(120)
def test_mpirun_stops_before_starting_anything_when_a_probe_fails(tmp_path, fake_mpiexec):
    c = _write(tmp_path, fake_mpiexec, [{"host": "goodA", "slots": "auto"}, {"host": "junkB", "slots": "auto"}])
    r = _cli(tmp_path, "mpirun", c)
    assert r.returncode == 2
    assert r.stderr.strip() == ("dptrain: cannot measure cluster.nodes.1 (junkB) for `auto`: `python -m "
                                "launcher.probe` through mpiexec failed: it printed no probe report (output: "
                                "'Welcome to junkB'); give its slots explicitly (in the config, or e.g. "
                                "`cluster.nodes.1.slots=4`)")
    assert not (tmp_path / "run").exists()
    assert all("launcher.probe" in call for call in open(tmp_path / "bin" / "calls.log"))


# ---------------------------------------------------------------- two namespace nodes, real Hydra
@netns_nodes.needs_netns
@pytest.mark.timeout(200)
def test_remote_auto_nodes_train_with_their_measured_slots(tmp_path, cluster_of_two):
    net, bridge, ssh = cluster_of_two
    per_node = max(1, usable_cpu_count() // 2)      # each namespace sees this machine's cores
    c = netns_nodes.write_config(tmp_path, net, bridge, ssh, slots="auto")
    t0 = time.monotonic()
    r = netns_nodes.dptrain(tmp_path, "mpirun", c, "job.threads=2", f"job.global_batch_size={32 * per_node}")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    for i, (addr, suffix) in enumerate(((f"{net}.2", "a"), (f"{net}.3", "b"))):
        assert f"dptrain: cluster.nodes.{i} ({addr}, hostname dpn" in r.stderr, r.stderr[-3000:]
        line = next(ln for ln in r.stderr.splitlines() if ln.startswith(f"dptrain: cluster.nodes.{i} ("))
        assert f"{suffix}): slots auto -> {per_node} ({usable_cpu_count()} usable cores // job.threads 2)" in line
    took = [float(ln.split(" in ")[1].split(" s")[0]) for ln in r.stderr.splitlines()
            if ln.startswith("dptrain: measured 2 remote node(s) in ")]
    assert took and took[0] < 30, r.stderr[-2000:]
    print(f"probe of 2 namespace nodes: {took[0]:.2f} s; whole run {time.monotonic() - t0:.1f} s")
    placement = json.loads((tmp_path / "run/placement.json").read_text())
    assert placement["hosts"] == [f"{net}.2", f"{net}.3"] and placement["gpus"] == [0, 0]
    assert [s["host"] for s in placement["slots"]] == [f"{net}.2"] * per_node + [f"{net}.3"] * per_node
    resolved = yaml.safe_load((tmp_path / "run/config.yaml").read_text())
    assert [(n["slots"], n["gpus"]) for n in resolved["cluster"]["nodes"]] == [(per_node, 0)] * 2
    summary = json.loads((tmp_path / "run/summary.json").read_text())
    assert summary["world_size"] == 2 * per_node and summary["steps"] == 40


@netns_nodes.needs_netns
@pytest.mark.timeout(120)
def test_a_host_the_probe_cannot_reach_stops_the_launch_quickly(tmp_path, cluster_of_two):
    net, bridge, ssh = cluster_of_two
    c = netns_nodes.write_config(tmp_path, net, bridge, ssh, slots="auto")
    text = (tmp_path / c).read_text().replace(f"{{host: {net}.3, slots: auto}}", f"{{host: {net}.9, slots: auto}}")
    (tmp_path / c).write_text(text)
    t0 = time.monotonic()
    r = netns_nodes.dptrain(tmp_path, "mpirun", c, "job.threads=2", timeout=60)
    took = time.monotonic() - t0
    assert r.returncode == 2, r.stderr[-3000:]
    assert r.stderr.strip().splitlines()[-1] == (
        f"dptrain: cannot measure cluster.nodes.1 ({net}.9) for `auto`: `python -m launcher.probe` through "
        f"mpiexec failed: mpiexec exited with code 255: unknown host {net}.9; give its slots explicitly (in the "
        f"config, or e.g. `cluster.nodes.1.slots=4`)"), r.stderr[-3000:]
    assert took < 30, took
    assert not (tmp_path / "run").exists()           # no run directory, no workers


@netns_nodes.needs_netns
@pytest.mark.timeout(200)
def test_an_elastic_restart_reuses_the_measured_slots(tmp_path, cluster_of_two):
    """The nodes are measured once per launch: the restart that leaves the failed node out plans the
    remaining one with its measured slots and probes nothing again."""
    net, bridge, ssh = cluster_of_two
    c = netns_nodes.write_config(tmp_path, net, bridge, ssh, slots="auto")
    threads = usable_cpu_count()                     # one slot per node, so the last rank is node 1's
    r = netns_nodes.dptrain(tmp_path, "mpirun", c, f"job.threads={threads}", "fault_tolerance.max_restarts=1",
                            "fault_tolerance.min_workers=1", env={"DPTRAIN_FAULT_CRASH_AT_STEP": "13"})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert r.stderr.count("dptrain: measured 2 remote node(s) in ") == 1
    assert f"elastic restart: node 1 ({net}.3) is left out; 1 worker continues" in r.stderr
    assert (tmp_path / "run/hostfile").read_text().strip() == f"{net}.2:1"
    assert json.loads((tmp_path / "run/placement.json").read_text())["hosts"] == [f"{net}.2"]
    assert yaml.safe_load((tmp_path / "run/config.yaml").read_text())["cluster"]["nodes"] == \
        [{"host": f"{net}.2", "slots": 1, "gpus": 0}]
