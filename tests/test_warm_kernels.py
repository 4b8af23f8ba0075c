"""Warm kernels on a busy machine: a kernel that is slow to answer is not dead, and no kernel is left behind."""
import os, signal, threading, time

import pytest

import vit_plasticity.grid as grid
from vit_plasticity.grid import WarmKernels, _shutdown, _silent

def _started_kernel(monkeypatch):
    "A kernel started the way the grid starts its warm kernels, with a warm-up that imports nothing."
    monkeypatch.setattr(grid, "_WARM_CODE", "None")
    return WarmKernels(1, 1)._start()

def _stall(pid: int, seconds: float) -> threading.Thread:
    "Stop the process now and let it go on after `seconds`: what a loaded machine does to a starting kernel."
    os.kill(pid, signal.SIGSTOP)
    def resume():
        time.sleep(seconds)
        try: os.kill(pid, signal.SIGCONT)
        except ProcessLookupError: pass  # stopped for good meanwhile
    t = threading.Thread(target=resume)
    t.start()
    return t

def test_a_kernel_that_misses_heartbeats_is_waited_for_not_declared_dead(monkeypatch):
    km = _started_kernel(monkeypatch)
    try:
        t = _stall(km.provisioner.pid, 3.0)  # three heartbeats missed (a heartbeat client gives up after one)
        _silent(km, "x = 1", timeout=120)
        t.join()
        assert km.provisioner.process.poll() is None
    finally: _shutdown(km)

def test_a_kernel_that_fails_to_warm_is_stopped_not_left_running(monkeypatch):
    monkeypatch.setattr(grid, "_WARM_CODE", "raise ValueError('cannot warm')")
    started = []
    real = grid.run_kernel_manager
    def recording(fd, env=None, log=None):
        cls = real(fd, env, log)
        class Recorded(cls):
            async def start_kernel(self, **kw):
                out = await super().start_kernel(**kw)
                started.append(self.provisioner.pid)
                return out
        return Recorded
    monkeypatch.setattr(grid, "run_kernel_manager", recording)
    with pytest.raises(RuntimeError, match="cannot warm"):
        WarmKernels(1, 1)._start()
    (pid,) = started
    deadline = time.time() + 30
    while _running(pid) and time.time() < deadline: time.sleep(0.1)
    assert not _running(pid), "the kernel that failed to warm was left running"

def _running(pid: int) -> bool:
    "A live process, not a zombie."
    try: return open(f"/proc/{pid}/stat").read().split(") ")[1][0] != "Z"
    except (FileNotFoundError, IndexError): return False

def test_a_warm_kernel_that_hangs_at_hand_over_is_replaced_by_a_fresh_one(monkeypatch):
    "The run gets a cold kernel's arguments (not a failure), and the hung warm kernel is stopped."
    km = _started_kernel(monkeypatch)
    pid = km.provisioner.pid
    monkeypatch.setattr(grid, "KERNEL_TIMEOUT", 2)
    pool = type("OneKernel", (), {"take": lambda self: km})()
    lock_r, lock_w = os.pipe()
    t = _stall(pid, 10.0)  # stopped for longer than the hand-over waits
    try:
        args = grid._kernel(pool, lock_r, {"VITP_TEST": "1"})
        assert set(args) == {"kernel_manager_class"}, args  # papermill starts a kernel of its own
        deadline = time.time() + 30
        while _running(pid) and time.time() < deadline: time.sleep(0.1)
        assert not _running(pid), "the hung warm kernel was left running"
    finally:
        t.join()
        os.close(lock_r)
        os.close(lock_w)

def test_kernels_started_together_talk_over_their_own_ipc_sockets(monkeypatch):
    "Four kernels started at once: Unix sockets unique to each (no TCP port to share), all gone after."
    import glob
    monkeypatch.setattr(grid, "_WARM_CODE", "None")
    wk = WarmKernels(4, 4)  # its starter threads live on: a kernel dies with the thread that started it
    kms = [f.result() for f in [wk.starters.submit(wk._start) for _ in range(4)]]
    try:
        infos = [km.get_connection_info() for km in kms]
        assert {i["transport"] for i in infos} == {"ipc"}
        assert len({i["ip"] for i in infos}) == 4 and all(os.path.isabs(i["ip"]) for i in infos)
        assert all(len(glob.glob(i["ip"] + "-*")) == 5 for i in infos)  # shell, iopub, stdin, control, heartbeat
        for km in kms: _silent(km, "x = 1", timeout=120)
    finally:
        for km in kms: _shutdown(km)
        wk.close()
    assert not [f for i in infos for f in glob.glob(i["ip"] + "-*")]

def test_a_kernels_own_stderr_goes_to_the_log_not_the_terminal(monkeypatch, tmp_path):
    "What the kernel process writes to its fd 2 (ipykernel's shutdown noise, a native crash) lands in the log."
    monkeypatch.setattr(grid, "_WARM_CODE", "None")
    wk = WarmKernels(1, 1, log=tmp_path / grid.KERNEL_LOG)
    km = wk.starters.submit(wk._start).result()
    try: _silent(km, "__import__('os').write(2, b'written by the kernel process\\n')", timeout=120)
    finally:
        _shutdown(km)
        wk.close()
    assert "written by the kernel process" in (tmp_path / grid.KERNEL_LOG).read_text()

class _FakeKernel:
    has_kernel = True

def _count_warm_ups(monkeypatch, seconds: float) -> dict:
    "Replace a kernel's start by `seconds` of waiting; count those warming ahead at once (`most`) and in all."
    seen, lock = dict(now=0, most=0, all=0), threading.Lock()
    def start(self):
        ahead = threading.current_thread().name.startswith("ThreadPoolExecutor")  # not a worker's own
        with lock:
            seen.update(now=seen["now"] + ahead, all=seen["all"] + 1)
            seen["most"] = max(seen["most"], seen["now"])
        time.sleep(seconds)
        with lock: seen["now"] -= ahead
        return _FakeKernel()
    monkeypatch.setattr(WarmKernels, "_start", start)
    return seen

def test_each_worker_has_a_kernel_warming_ahead_and_no_more_start_than_runs(monkeypatch):
    "Runs shorter than a warm-up: two workers keep two kernels warming (one did, and runs went one by one)."
    seen = _count_warm_ups(monkeypatch, 0.2)
    wk = WarmKernels(2, 8)
    def worker():
        for _ in range(4): wk.take()  # a run that takes no time: the kernels' warm-up sets the pace
    threads = [threading.Thread(target=worker, name=f"worker-{i}") for i in range(2)]
    for t in threads: t.start()
    for t in threads: t.join()
    wk.close()
    assert seen["all"] == 8  # one kernel per run, none more
    assert seen["most"] == 2  # one warming ahead per worker

def _threads_and_files() -> tuple[int, int]:
    return len(os.listdir("/proc/self/task")), len(os.listdir("/proc/self/fd"))

def test_runs_on_warm_kernels_leave_no_threads_or_open_files_behind(monkeypatch, tmp_path):
    "Papermill on a handed-over kernel, three times: threads and open files stay as after the first run."
    import json
    import papermill as pm
    monkeypatch.setattr(grid, "_WARM_CODE", "None")
    cell = dict(cell_type="code", id="c0", metadata={"tags": ["parameters"]}, execution_count=None, outputs=[],
                source="x = 1")
    kernelspec = {"name": "python3", "display_name": "python3", "language": "python"}
    (tmp_path / "in.ipynb").write_text(json.dumps(dict(cells=[cell], metadata={"kernelspec": kernelspec},
                                                       nbformat=4, nbformat_minor=5)))
    wk, seen = WarmKernels(1, 3), []
    try:
        for _ in range(3):
            km = wk.starters.submit(wk._start).result()
            pm.execute_notebook(str(tmp_path / "in.ipynb"), str(tmp_path / "out.ipynb"), progress_bar=False,
                                kernel_name="python3", km=km)
            _shutdown(km)
            seen.append(_threads_and_files())
    finally: wk.close()
    assert seen[2] == seen[0], seen  # were +3 threads (heartbeat, ZeroMQ's two) and ~12 files a run
