"""Plain submitit on a real SLURM cluster: results come back, `sacct` knows the jobs, and submitit sees the
end states a grid has to recognise (TIMEOUT, CANCELLED, a memory overrun, a requeue after preemption).

The cluster comes from the `slurm_cluster` fixture (tests/conftest.py), which skips these tests when there is
none. The one-minute time limit dominates the wall time (~1.5 min): that job is submitted first, by a module
fixture, so that its minute runs alongside the other tests, on the second core."""
import os, re, subprocess, sys, time

import cloudpickle
import pytest
import submitit
from submitit.core.utils import UncompletedJobError

pytestmark = pytest.mark.slurm
# Jobs unpickle the functions below; this module is not importable inside a job, so pickle it by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

def square_in_task(x: int) -> tuple:
    return x * x, sys.executable, os.environ["SLURM_ARRAY_TASK_ID"]

def hold_memory(mb: int, seconds: float) -> int:
    data = b"\1" * (mb << 20)  # written, so resident
    time.sleep(seconds)
    return len(data)

class CountStarts(submitit.helpers.Checkpointable):
    "Appends `<start> <SLURM_RESTART_COUNT>` to `log` on each start; the first start sleeps until preempted."
    def __init__(self, log: str):
        self.log, self.starts = log, 0

    def __call__(self) -> int:
        self.starts += 1
        with open(self.log, "a") as f: f.write(f"{self.starts} {os.environ.get('SLURM_RESTART_COUNT', 0)}\n")
        if self.starts == 1: time.sleep(600)
        return self.starts

def sacct_states(job_id: str, n: int, timeout_s: float = 30) -> dict:
    "Allocation (not step) states of `job_id` in the accounting database, once `n` of them have ended."
    end = time.monotonic() + timeout_s
    while True:
        out = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "JobID,State", "-j", job_id],
                             capture_output=True, text=True, check=True).stdout
        states = dict(line.split("|") for line in out.splitlines())
        ended = [s for s in states.values() if s not in ("PENDING", "RUNNING", "REQUEUED", "COMPLETING")]
        if len(ended) >= n or time.monotonic() > end: return states
        time.sleep(1)

def wait_for(cond, timeout_s: float, what: str):
    end = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > end: pytest.fail(f"{what} did not happen within {timeout_s:.0f} s")
        time.sleep(0.5)

def timed_raise(job: submitit.Job, match: str) -> float:
    "Seconds `job.result()` took to raise UncompletedJobError naming `match`."
    t0 = time.monotonic()
    with pytest.raises(UncompletedJobError, match=match): job.result()
    return time.monotonic() - t0

@pytest.fixture(scope="module", autouse=True)
def overrun_job(slurm_cluster, tmp_path_factory):
    """A job sleeping far past its one-minute limit, submitted before the other tests.
    submitit asks SLURM for USR2 `slurm_signal_delay_s` before the limit (default 90 s, more than this whole
    limit) and turns that signal into a FAILED job when the function cannot checkpoint; 0 leaves the limit to
    SLURM, whose TIMEOUT is what this tests."""
    ex = slurm_cluster.executor(tmp_path_factory.mktemp("overrun"), timeout_min=1, slurm_signal_delay_s=0)
    job = ex.submit(time.sleep, 3600)
    yield job
    job.cancel(check=False)

def test_job_array_returns_results_in_the_venv_and_sacct_knows_it(slurm_cluster, slurm_executor):
    jobs = slurm_executor.map_array(square_in_task, [1, 2, 3])
    for job in jobs: slurm_cluster.wait(job, 120)
    squares, pythons, tasks = zip(*[job.result() for job in jobs])
    assert squares == (1, 4, 9)
    assert set(pythons) == {sys.executable}  # each task ran the submitting interpreter
    assert tasks == ("0", "1", "2")
    array_id = jobs[0].job_id.split("_")[0]
    assert sacct_states(array_id, 3) == {f"{array_id}_{i}": "COMPLETED" for i in range(3)}

def test_cancelled_job_ends_cancelled_and_result_raises(slurm_cluster, slurm_executor):
    job = slurm_executor.submit(time.sleep, 3600)
    try:
        running = lambda: job.get_info(mode="force").get("State") == "RUNNING"
        wait_for(running, 60, f"job {job.job_id} running")
        job.cancel()
        assert slurm_cluster.wait(job, 60).startswith("CANCELLED")  # "CANCELLED by <uid>"
        assert timed_raise(job, "CANCELLED") < job._results_timeout_s + 10
        assert sacct_states(job.job_id, 1)[job.job_id].startswith("CANCELLED")
    finally:
        job.cancel(check=False)

def test_preempted_checkpointable_job_is_requeued_and_resumes(slurm_cluster, tmp_path):
    # timeout_min=60: submitit calls a USR2 in the first 48 minutes a preemption, later ones a time-out.
    log = tmp_path / "starts.txt"
    job = slurm_cluster.executor(tmp_path / "slurm", timeout_min=60).submit(CountStarts(str(log)))
    try:
        wait_for(log.exists, 60, f"first start of job {job.job_id}")
        # What a preempting SLURM sends: USR2 to the job's steps; submitit checkpoints, `scontrol requeue`s.
        subprocess.run(["scancel", "--signal=USR2", job.job_id], check=True)
        slurm_cluster.wait(job, 300)  # a requeued job waits AuthInfo's cred_expire: 15 s here, 120 s default
        assert job.result() == 2  # the checkpointed object, with its first start counted, ran again
        assert log.read_text().splitlines() == ["1 0", "2 1"]
        out = subprocess.run(["sacct", "-D", "-X", "-n", "-P", "-o", "State", "-j", job.job_id],
                             capture_output=True, text=True, check=True).stdout
        assert out.split()[0] == "REQUEUED"
    finally:
        job.cancel(check=False)

def test_job_over_its_memory_is_killed(slurm_cluster, slurm_executor):
    t0 = time.monotonic()
    job = slurm_executor.submit(hold_memory, 1024, 60)  # four times its 256 MB
    state = slurm_cluster.wait(job, 120)
    stderr = job.stderr() or ""
    if state == "COMPLETED": pytest.skip("this cluster does not enforce --mem (no cgroup, no OverMemoryKill)")
    # submitit runs the function in an srun step: whether a cgroup OOM-kills the step (step OUT_OF_MEMORY) or
    # OverMemoryKill does (no cgroups), the batch script then fails, and so the job is FAILED.
    assert state in ("FAILED", "OUT_OF_MEMORY"), f"state {state}, stderr: {stderr[-800:]}"
    assert re.search("exceeded memory limit|oom-kill event", stderr), stderr[-800:]
    assert time.monotonic() - t0 < 40
    assert timed_raise(job, state) < job._results_timeout_s + 10

def test_job_past_its_time_limit_ends_timeout_and_result_raises(slurm_cluster, overrun_job):
    # SLURM checks time limits every 30 s: the job ends 60 to 90 s after it started.
    assert slurm_cluster.wait(overrun_job, 240) == "TIMEOUT"
    assert sacct_states(overrun_job.job_id, 1) == {overrun_job.job_id: "TIMEOUT"}
    # result() first waits up to _results_timeout_s (15 s) for a slow filesystem to show a result file; the
    # tests above show that default, this one, last and on the wall time's critical path, trims it.
    overrun_job._results_timeout_s = 2
    assert timed_raise(overrun_job, "TIMEOUT") < 10
