"""The bwrap command line (pure), and the state files' modes (0700 run dir, 0600 files)."""

from __future__ import annotations

import stat
from pathlib import Path

from hostagent.runtime import Record, RunDir
from hostagent.sandbox import Sandbox, _outermost


def test_argv_confines_and_drops_to_the_machines_uid() -> None:
    box = Sandbox(hostname="m1", uid=100007, ro_binds=("/opt/py", "/opt/py/lib", "/", "/usr/lib"),
                  rw_binds=("/srv/share",), status_fd=9)
    argv = box.argv(["python", "-m", "app"], root_links=["bin", "lib"], etc=["resolv.conf"])
    text = " ".join(argv)
    for flag in ("--unshare-pid", "--unshare-ipc", "--unshare-uts", "--proc /proc", "--dev /dev", "--tmpfs /tmp",
                 "--hostname m1", "--json-status-fd 9", "--symlink usr/bin /bin", "--ro-bind /etc/resolv.conf"):
        assert flag in text
    assert "--ro-bind /opt/py /opt/py" in text and "/opt/py/lib" not in text  # inside another bind
    assert "--ro-bind / /" not in text and "--ro-bind /usr/lib" not in text  # never the root, /usr once
    assert "--bind /srv/share /srv/share" in text
    assert "--perms 0755 --dir /srv" in text and "--perms 0755 --dir /opt" in text
    assert argv[-4:] == ["--", "python", "-m", "app"]
    after = argv[argv.index("/usr/bin/setpriv"):]
    assert after[:4] == ["/usr/bin/setpriv", "--reuid", "100007", "--regid"]
    assert "--no-new-privs" in after and "-all" in after
    assert "--die-with-parent" not in argv  # machines outlive a restart of their agent


def test_outermost_keeps_only_top_paths() -> None:
    assert _outermost(["/a/b", "/a", "/c", "relative", "/usr/x"]) == ["/a", "/c"]


def test_run_dir_and_state_files_are_private(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    run.write(Record("m1", 123, 456, 1.5, restarts=2, uid=100001, env={"FLY_MACHINE_ID": "m1"}))
    assert stat.S_IMODE((tmp_path / "run").stat().st_mode) == 0o700
    assert stat.S_IMODE(run.machines.stat().st_mode) == 0o700
    assert stat.S_IMODE(run.record_path("m1").stat().st_mode) == 0o600
    assert run.read("m1") == Record("m1", 123, 456, 1.5, 2, 100001, {"FLY_MACHINE_ID": "m1"})
    assert run.records() == [run.read("m1")]
    run.status_path("m1").write_text('{ "child-pid": 77 }\n{ "exit-code": 137 }\n')
    assert run.inner_pid("m1") == 77
    assert run.exit_status("m1") == -9  # 128 + 9: killed by SIGKILL
    run.status_path("m1").write_text('{ "child-pid": 77 }\n{ "exit-code": 3 }\n')
    assert run.exit_status("m1") == 3
    run.forget("m1")
    assert run.read("m1") is None
