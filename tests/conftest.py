"""A SLURM cluster for the tests that submit jobs (fixture `slurm_cluster`, marker `slurm`).

Which cluster, decided once per session:
1. `sinfo` answers (a real cluster): use it, never stop it.
2. the throwaway cluster of scripts/slurm_cluster.sh is up already: use it, leave it up.
3. CI=true or VITP_TEST_SLURM=1, as root, with apt-get: install and start the throwaway cluster; stop it (by
   its recorded PIDs) when the session ends.
4. otherwise: skip, saying how to run these tests.
Jobs inherit the submitting process's environment, so SLURM_CONF, set here for the throwaway cluster, also
reaches the `scontrol requeue` that submitit runs inside a job."""
import os, shutil, signal, subprocess, tempfile, time
from dataclasses import dataclass
from pathlib import Path

import pytest
import submitit

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "slurm_cluster.sh"
STATE = Path(os.environ.get("VITP_SLURM_STATE", "/tmp/vitp-slurm"))
HOWTO = ("these tests need a SLURM cluster: run them as root on Debian/Ubuntu with VITP_TEST_SLURM=1 (they "
         "install, start, then stop a throwaway single-node cluster with scripts/slurm_cluster.sh), or on "
         "a machine where `sinfo` answers")

def pytest_configure(config):
    config.addinivalue_line("markers", "slurm: submits jobs to a SLURM cluster (fixture `slurm_cluster`)")
    # Ctrl-C as at a terminal for every launcher the tests start: a test session run from a background job
    # (nohup, `cmd &` in a script) inherits SIGINT ignored, its launchers then ignore the Ctrl-C the tests send,
    # and the Ctrl-C test saw a launcher run all its runs and exit 0. A handled SIGINT is default in children.
    signal.signal(signal.SIGINT, signal.default_int_handler)

@dataclass
class SlurmCluster:
    "The cluster jobs go to: its default partition, and whether this session started it."
    partition: str
    started_here: bool

    def executor(self, folder: Path, **params) -> submitit.AutoExecutor:
        """A submitit executor writing under `folder`: 1 CPU, 256 MB, 5 minutes on `partition`, unless
        `params` say otherwise. Keep `timeout_min` * 60 well above `slurm_signal_delay_s` (90 s by default):
        submitit turns that early USR2 into a FAILED job when the function cannot checkpoint."""
        ex = submitit.AutoExecutor(folder=Path(folder) / "%j", cluster="slurm")
        defaults = {"slurm_partition": self.partition, "timeout_min": 5, "cpus_per_task": 1, "mem_gb": 0.25}
        ex.update_parameters(**{**defaults, **params})
        return ex

    def wait(self, job: submitit.Job, timeout_s: float) -> str:
        "`job`'s state once done, read from `sacct` every second; fails (never hangs) after `timeout_s`."
        end = time.monotonic() + timeout_s
        while not job.done(force_check=True):
            if time.monotonic() > end:
                pytest.fail(f"SLURM job {job.job_id} not done after {timeout_s:.0f} s (state {job.state}); "
                            f"stderr: {(job.stderr() or '')[-1500:]}")
            time.sleep(1)
        return job.state

def _sinfo_answers() -> bool:
    if shutil.which("sinfo") is None: return False
    try: return subprocess.run(["sinfo", "-h"], capture_output=True, timeout=15).returncode == 0
    except subprocess.TimeoutExpired: return False

def _default_partition() -> str:
    sinfo = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, check=True)
    names = sinfo.stdout.split()
    default = [n[:-1] for n in names if n.endswith("*")]
    return os.environ.get("VITP_SLURM_PARTITION") or (default or names)[0]

def _script(command: str) -> subprocess.CompletedProcess:
    "Run `slurm_cluster.sh command`, its output in a file: the daemons it starts must not hold a pipe open."
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.run(["bash", str(SCRIPT), command], stdout=out, stderr=subprocess.STDOUT,
                              env={**os.environ, "VITP_SLURM_STATE": str(STATE)})
        out.seek(0)
        proc.stdout = out.read()
    return proc

def _may_start() -> bool:
    asked = os.environ.get("CI", "").lower() == "true" or os.environ.get("VITP_TEST_SLURM") == "1"
    return asked and os.geteuid() == 0 and shutil.which("apt-get") is not None

@pytest.fixture(scope="session")
def slurm_cluster():
    "The session's SLURM cluster (which one: see the module docstring); skips the test when there is none."
    if _sinfo_answers():
        yield SlurmCluster(_default_partition(), started_here=False)
        return
    previous = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(STATE / "etc" / "slurm.conf")
    try:
        if _script("status").returncode == 0:
            yield SlurmCluster(_default_partition(), started_here=False)
            return
        if not _may_start(): pytest.skip(HOWTO)
        installed = _script("install")
        if installed.returncode != 0: pytest.skip(f"cannot install SLURM here: {installed.stdout[-2000:]}")
        started = _script("start")
        try:
            if started.returncode != 0:
                pytest.fail(f"the SLURM cluster did not come up:\n{started.stdout[-6000:]}")
            yield SlurmCluster(_default_partition(), started_here=True)
        finally:
            stopped = _script("stop")
            assert stopped.returncode == 0, f"stopping the SLURM cluster failed:\n{stopped.stdout[-3000:]}"
    finally:
        if previous is None: os.environ.pop("SLURM_CONF", None)
        else: os.environ["SLURM_CONF"] = previous

@pytest.fixture(scope="session")
def slurm_partition(slurm_cluster) -> str:
    "The partition jobs go to: the cluster's default, or VITP_SLURM_PARTITION."
    return slurm_cluster.partition

@pytest.fixture
def slurm_executor(slurm_cluster, tmp_path) -> submitit.AutoExecutor:
    "A submitit executor for the session's cluster, its job folders under `tmp_path`."
    return slurm_cluster.executor(tmp_path / "slurm")
