"""Output folders, as a careless or hostile user would pick them: nothing a stage does
not own is replaced, concurrent publishers never fail or mix, dead staging is cleared."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from userip.atomic import MARKER, OutputDirError, publish_dir, remove_dead_staging, staging_dir
from userip.cli import main as cli_main

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def _publish(dest: Path, stage: str, payload: str) -> None:
    with staging_dir(dest, stage) as tmp:
        (tmp / "payload.txt").write_text(payload)
        publish_dir(tmp, dest, stage)


def _prepare(out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "userip.cli", "prepare", "--source",
                           "movielens-100k", "--max-users", "20", "--out", str(out), *extra],
                          capture_output=True, text=True, env=ENV, cwd=out.parent, timeout=600)


def test_prepare_refuses_a_user_folder_and_a_file_and_keeps_them(tmp_path: Path) -> None:
    mine = tmp_path / "my-work"
    mine.mkdir()
    (mine / "notes.txt").write_text("precious")
    res = _prepare(mine)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "refusing to replace it" in res.stderr
    assert (mine / "notes.txt").read_text() == "precious"

    afile = tmp_path / "afile"
    afile.write_text("mine")
    res = _prepare(afile)
    assert res.returncode == 2 and "is not a folder" in res.stderr
    assert afile.read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "my-work"]  # nothing hidden


def test_prepare_replaces_its_own_output_but_not_another_stages(tmp_path: Path) -> None:
    out = tmp_path / "data"
    assert _prepare(out).returncode == 0
    first = json.loads((out / MARKER).read_text())
    assert first == {"stage": "prepare"}
    assert _prepare(out).returncode == 0  # an earlier prepare output is replaced
    assert (out / "stats.json").is_file()

    _publish(tmp_path / "q", "quantize", "codes")
    res = _prepare(tmp_path / "q")
    assert res.returncode == 2 and "holds the output of stage 'quantize'" in res.stderr
    assert (tmp_path / "q" / "payload.txt").read_text() == "codes"


@pytest.mark.parametrize("out", [".", ".."])
def test_working_directory_and_its_parent_are_refused(tmp_path: Path, out: str) -> None:
    work = tmp_path / "w"
    work.mkdir()
    res = subprocess.run([sys.executable, "-m", "userip.cli", "prepare", "--source",
                          "movielens-100k", "--out", out], capture_output=True, text=True,
                         env=ENV, cwd=work, timeout=600)
    assert res.returncode == 2 and "working directory" in res.stderr
    assert work.is_dir() and sorted(os.listdir(tmp_path)) == ["w"]


def test_an_empty_folder_is_used(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    _publish(tmp_path / "empty", "quantize", "x")
    assert (tmp_path / "empty" / "payload.txt").read_text() == "x"


def test_failed_reject_gate_keeps_rejects_beside_out(tmp_path: Path, capsys) -> None:
    reviews = tmp_path / "reviews.json"
    good = {"reviewerID": "u1", "asin": "i1", "overall": 5.0, "unixReviewTime": 1_400_000_000}
    reviews.write_text(json.dumps(good) + "\n" + "{not json\n" * 3)
    (tmp_path / "earlier.rejects.jsonl").write_text("not mine to delete\n")
    out = tmp_path / "earlier"
    code = cli_main(["prepare", "--source", "amazon2014", "--reviews", str(reviews),
                     "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "3 of 4 lines rejected" in err
    kept = tmp_path / "earlier.1.rejects.jsonl"  # the existing name is not reused
    assert f"(all in {kept})" in err
    assert [json.loads(x)["line"] for x in kept.read_text().splitlines()] == [2, 3, 4]
    assert (tmp_path / "earlier.rejects.jsonl").read_text() == "not mine to delete\n"
    assert not out.exists() and not list(tmp_path.glob(".tmp-*"))


_RACER = """
import sys
from pathlib import Path
from userip.atomic import publish_dir, staging_dir
dest, tag = Path(sys.argv[1]), sys.argv[2]
for i in range(int(sys.argv[3])):
    with staging_dir(dest, "quantize") as tmp:
        for n in range(20):
            (tmp / f"f{n}").write_text(f"{tag}-{i}")
        publish_dir(tmp, dest, "quantize")
"""


def test_concurrent_publishers_never_fail_or_mix(tmp_path: Path) -> None:
    dest = tmp_path / "out"
    procs = [subprocess.Popen([sys.executable, "-c", _RACER, str(dest), f"p{k}", "25"],
                              env=ENV, stderr=subprocess.PIPE, text=True) for k in range(4)]
    seen = 0
    while any(p.poll() is None for p in procs):
        try:  # one folder, held open: a reader of a published folder sees one publish
            fd = os.open(dest, os.O_RDONLY)
        except FileNotFoundError:
            continue  # between the two renames of a swap the folder is briefly absent
        try:
            values = set()
            for n in range(20):
                f = os.open(f"f{n}", os.O_RDONLY, dir_fd=fd)
                values.add(os.read(f, 100).decode())
                os.close(f)
        except FileNotFoundError:
            continue  # the old folder, renamed aside, was being deleted
        finally:
            os.close(fd)
        assert len(values) == 1, f"a mix of two publishes: {values}"
        seen += 1
    errors = [p.stderr.read() for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], errors
    assert seen > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging, no .old-*


def test_only_provably_dead_staging_is_removed(tmp_path: Path) -> None:
    dest = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom pathlib import Path\n"
         "from userip.atomic import staging_dir\n"
         "with staging_dir(Path(sys.argv[1]), 'quantize') as t:\n"
         "    (t / 'big').write_text('x'); print(t, flush=True); time.sleep(600)\n", str(dest)],
        env=ENV, stdout=subprocess.PIPE, text=True)
    live = Path(holder.stdout.readline().strip())
    foreign = tmp_path / ".tmp-someone-elses"  # no lock file: cannot be proven dead
    foreign.mkdir()
    assert remove_dead_staging(tmp_path) == [] and live.is_dir()
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert live.is_dir()  # killed: its staging is left behind ...
    _publish(dest, "quantize", "new")  # ... until the next stage beside it proves it dead
    assert not live.exists() and foreign.is_dir()


def test_a_writer_killed_while_setting_up_leaves_nothing_for_long(tmp_path: Path) -> None:
    fresh, old = tmp_path / ".prep-out.fresh", tmp_path / ".prep-out.old"
    for d in (fresh, old):  # killed between creating the folder and locking its .alive
        d.mkdir()
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    assert remove_dead_staging(tmp_path) == [old]
    assert fresh.is_dir()  # may be a live writer's first microseconds


def test_staging_dir_refuses_before_any_work(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "a").write_text("a")
    started = time.monotonic()
    with pytest.raises(OutputDirError, match="not empty"):
        with staging_dir(tmp_path / "x", "prepare"):
            pytest.fail("the body ran")
    assert time.monotonic() - started < 5
