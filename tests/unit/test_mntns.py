"""Which of the host's mounts the namespace actions start from drops (workers/mntns.py)."""

from workers.mntns import mountpoints, to_detach

# A container's table, as /proc/self/mountinfo has it (parents first, mounts stacked twice).
MOUNTINFO = """\
22 27 0:21 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw
23 27 0:22 / /sys rw,nosuid,nodev,noexec,relatime - sysfs sysfs rw
24 27 0:5 / /dev rw,nosuid - devtmpfs devtmpfs rw
25 24 0:23 / /dev/shm rw,nosuid,nodev - tmpfs tmpfs rw
26 24 0:24 / /dev/pts rw,nosuid,noexec,relatime - devpts devpts rw
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
28 27 0:30 / /mnt/tools\\040dir ro,relatime - nfs server:/tools rw
29 24 0:24 / /dev/pts rw,nosuid,noexec,relatime - devpts devpts rw
30 23 0:26 / /sys/fs/cgroup ro,nosuid,nodev,noexec - tmpfs tmpfs rw
31 30 0:27 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
32 22 0:40 / /proc/sys/fs/binfmt_misc rw,relatime - binfmt_misc binfmt_misc rw
33 27 254:1 / /srv rw,relatime - ext4 /dev/vdb rw
34 27 254:1 /etc-hosts /etc/hosts rw,relatime - ext4 /dev/vdb rw
35 27 0:50 / /tmp rw - tmpfs tmpfs rw
36 27 0:51 / /var/lib/reapi rw - ext4 /dev/vdc rw
37 36 0:52 / /var/lib/reapi/exec/w1/cache rw - tmpfs tmpfs rw
"""
TREES = ["/usr", "/etc", "/var/lib/reapi/exec/w1", "/proc", "/usr/bin"]
POINTS = ["/dev", "/tmp"]


def test_mountpoints_are_read_in_order_with_escapes_decoded() -> None:
    points = mountpoints(MOUNTINFO)
    assert points[:6] == ["/proc", "/sys", "/dev", "/dev/shm", "/dev/pts", "/"]
    assert "/mnt/tools dir" in points


def test_what_no_action_needs_is_detached_once_and_nothing_it_needs() -> None:
    detach = to_detach(mountpoints(MOUNTINFO), TREES, POINTS)
    # /sys once (its cgroups go with it), /dev's own submounts (each stacked one by the holder's
    # loop), a share no action binds.
    assert sorted(detach) == ["/dev/pts", "/dev/shm", "/mnt/tools dir", "/srv", "/sys"]
    assert detach.index("/sys") < detach.index("/dev/shm")  # shallower first
    kept = set(mountpoints(MOUNTINFO)) - set(detach) - {"/sys/fs/cgroup", "/sys/fs/cgroup/memory"}
    # /, /proc and below, /dev and /tmp themselves, what holds the exec directory (above and
    # below it), and /etc/hosts, a mount inside what the sandbox binds.
    assert kept == {
        "/",
        "/proc",
        "/proc/sys/fs/binfmt_misc",
        "/dev",
        "/tmp",
        "/var/lib/reapi",
        "/var/lib/reapi/exec/w1/cache",
        "/etc/hosts",
    }


def test_a_mount_listed_before_the_one_it_is_on_is_detached_with_it() -> None:
    mounts = ["/sys/fs/cgroup/memory", "/", "/sys/fs/cgroup", "/sys"]
    assert to_detach(mounts, TREES, POINTS) == ["/sys"]


def test_a_read_only_directory_on_its_own_mount_is_kept() -> None:
    detach = to_detach(mountpoints(MOUNTINFO), [*TREES, "/mnt/tools dir"], POINTS)
    assert "/mnt/tools dir" not in detach
