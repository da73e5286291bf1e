"""A class on one machine (run by classroom.sh, which sets up the environment and fills the shared
cache as scripts/class-setup does): N learners, each in a fresh Rust kernel with their own cache,
open notebook 00 BENCH_START_GAP seconds apart and run it top to bottom. Reports, per learner, the
first cell's time after their click, the whole notebook's time and the peak memory of their kernel
(evcxr_jupyter with the process that runs the cells), then the peak of the rust-analyzer their
kernels share (scripts/evcxr-kernel, tools/evcxr) and the machine's peak memory in use.

Speed and memory are reported, never asserted."""

import os
import pathlib
import sys
import threading
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from first_cell import Kernel, analyzer_rss, cells, process_tree_rss  # noqa: E402

LEARNERS = int(os.environ.get("BENCH_LEARNERS", "8"))
GAP = float(os.environ.get("BENCH_START_GAP", "5"))
READ = float(os.environ.get("BENCH_READ", "20"))


def memory_in_use():
    """MemTotal − MemAvailable, in bytes."""
    fields = {}
    for line in pathlib.Path("/proc/meminfo").read_text().splitlines():
        key, value = line.split(":", 1)
        fields[key] = int(value.split()[0]) * 1024
    return fields["MemTotal"] - fields["MemAvailable"]


def learner(index, env, results):
    home = pathlib.Path(env["BENCH_TMP"]) / f"learner-{index}"
    env = dict(env, FLOWERS_KIT_HOME=str(home))
    started = time.monotonic()
    try:
        kernel = Kernel(env)
    except Exception as error:  # a kernel that never starts is a result too
        results[index] = f"kernel did not start: {error}"
        return
    pid = kernel.km.provisioner.process.pid
    peak, done = [0], threading.Event()

    def sample():
        while not done.wait(0.5):
            usage = process_tree_rss(pid)
            peak[0] = max(peak[0], usage["kernel"] + usage["cells"])

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        # The learner reads the notebook's opening text, then runs every cell in order.
        time.sleep(max(0.0, started + READ - time.monotonic()))
        click = time.monotonic()
        times = []
        for code in cells():
            seconds, _ = kernel.run(code)
            times.append(seconds)
        results[index] = (times[0], time.monotonic() - click, peak[0])
    except SystemExit as failure:
        results[index] = f"a cell failed: {str(failure)[:300]}"
    finally:
        done.set()
        sampler.join()
        kernel.close()


def main():
    env = dict(os.environ)
    results = [None] * LEARNERS
    machine, done = [memory_in_use(), memory_in_use()], threading.Event()
    analyzer = [0]

    def sample_machine():
        while not done.wait(0.5):
            machine[1] = max(machine[1], memory_in_use())
            analyzer[0] = max(analyzer[0], analyzer_rss())

    threading.Thread(target=sample_machine, daemon=True).start()
    threads = []
    for i in range(LEARNERS):
        thread = threading.Thread(target=learner, args=(i, env, results))
        thread.start()
        threads.append(thread)
        time.sleep(GAP)
    for thread in threads:
        thread.join()
    done.set()
    print(f"{LEARNERS} learners, {GAP:.0f} s apart, each reading {READ:.0f} s before running notebook 00:")
    for i, result in enumerate(results):
        if isinstance(result, tuple):
            first, whole, peak = result
            print(f"  learner {i + 1}: first cell {first:.1f} s, notebook {whole:.0f} s, "
                  f"peak {peak / 2**20:.0f} MiB", flush=True)
        else:
            print(f"  learner {i + 1}: FAILED, {result}", flush=True)
    peaks = [result[2] for result in results if isinstance(result, tuple)]
    if peaks:
        print(f"shared rust-analyzer: peak {analyzer[0] / 2**20:.0f} MiB; per learner with their share of it: "
              f"{(max(peaks) + analyzer[0] / LEARNERS) / 2**20:.0f} MiB at most", flush=True)
    print(f"machine: {machine[0] / 2**30:.1f} GiB in use before, peak {machine[1] / 2**30:.1f} GiB "
          f"of {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.1f} GiB", flush=True)


if __name__ == "__main__":
    main()
