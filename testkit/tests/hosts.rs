//! The multi-host harness on the real kernel (as root): hosts reach each other,
//! partitions (both ways, one way, isolation) cut exactly what they say and heal,
//! processes in a host can be killed, stopped and continued, loss drops what it says,
//! a slow link is shaped, and dropping a cluster removes everything, even when the test
//! panics. Traffic only ever goes between the test's own namespaces.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::process::ExitStatusExt;
use std::process::Command;
use std::time::{Duration, Instant};

use testkit::hosts::{leftovers, poll_until, Cluster};

/// Asserts that nothing named with the cluster's prefix is left once it is dropped.
fn drop_and_check(cluster: Cluster) {
    let prefix = cluster.prefix().to_string();
    let dir = cluster.dir().to_path_buf();
    drop(cluster);
    let left = leftovers(&prefix);
    assert!(left.is_empty(), "left behind: {left:?}");
    assert!(!dir.exists(), "{} is left behind", dir.display());
}

/// A UDP socket bound inside host `i`, on its address and a free port.
fn udp_in(cluster: &Cluster, i: usize) -> UdpSocket {
    let addr = cluster.addr(i);
    cluster
        .host(i)
        .run_in(move || UdpSocket::bind((addr, 0)))
        .expect("entering the host")
        .expect("binding a UDP socket in the host")
}

/// Gives a socket a 4 MiB receive buffer (`SO_RCVBUFFORCE`: root may exceed
/// `rmem_max`), so a burst of datagrams is never dropped because the receiving thread
/// was not scheduled in time: only the faults under test may lose them.
fn big_receive_buffer(socket: &UdpSocket) {
    use std::os::fd::AsRawFd;
    let size: libc::c_int = 4 << 20;
    // SAFETY: setsockopt reads one c_int from `size`, which lives across the call, on
    // a descriptor borrowed from a live socket.
    let r = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(r, 0, "SO_RCVBUFFORCE: {}", std::io::Error::last_os_error());
}

/// How many of `count` datagrams sent from host `from` to host `to` arrive; waits
/// until 300 ms pass without one arriving.
fn datagrams(cluster: &Cluster, from: usize, to: usize, count: usize) -> usize {
    let rx = udp_in(cluster, to);
    let tx = udp_in(cluster, from);
    let dest = rx.local_addr().expect("local address");
    rx.set_read_timeout(Some(Duration::from_millis(300)))
        .expect("read timeout");
    big_receive_buffer(&rx);
    let receiver = std::thread::spawn(move || {
        let mut seen = std::collections::BTreeSet::new();
        let mut buf = [0u8; 64];
        while let Ok(n) = rx.recv(&mut buf) {
            seen.insert(buf[..n].to_vec());
        }
        seen.len()
    });
    for n in 0..count {
        tx.send_to(format!("datagram {n}").as_bytes(), dest)
            .expect("sending a datagram");
        if n % 32 == 31 {
            // Leave the receiver time to drain its buffer.
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    receiver.join().expect("receiver thread")
}

/// Whether a datagram from host `from` reaches host `to`: three are sent, and the
/// first to arrive within 250 ms answers yes.
fn reaches(cluster: &Cluster, from: usize, to: usize) -> bool {
    let rx = udp_in(cluster, to);
    let tx = udp_in(cluster, from);
    let dest = rx.local_addr().expect("local address");
    rx.set_read_timeout(Some(Duration::from_millis(250)))
        .expect("read timeout");
    for _ in 0..3 {
        tx.send_to(b"probe", dest).expect("sending a datagram");
    }
    let mut buf = [0u8; 16];
    rx.recv(&mut buf).is_ok()
}

/// Asserts the reachability of every ordered pair of hosts: `blocked` lists the pairs
/// that must not get through, every other pair must.
fn assert_reachability(cluster: &Cluster, blocked: &[(usize, usize)]) {
    let n = cluster.hosts().len();
    for a in 0..n {
        for b in 0..n {
            if a != b {
                let expected = !blocked.contains(&(a, b));
                assert_eq!(
                    reaches(cluster, a, b),
                    expected,
                    "host {a} -> host {b}: expected {}",
                    if expected { "reachable" } else { "dropped" }
                );
            }
        }
    }
}

/// Connects from host `from` to `addr`, sends a line and returns what comes back
/// within `timeout` (`None`: no connection or no answer).
fn echo(cluster: &Cluster, from: usize, addr: SocketAddr, timeout: Duration) -> Option<String> {
    let conn = cluster
        .host(from)
        .run_in(move || TcpStream::connect_timeout(&addr, timeout))
        .expect("entering the host");
    let mut conn = conn.ok()?;
    conn.set_read_timeout(Some(timeout)).expect("read timeout");
    conn.write_all(b"hello\n").ok()?;
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    while !got.ends_with(b"\n") {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    (!got.is_empty()).then(|| String::from_utf8_lossy(&got).into_owned())
}

/// busybox `nc` as a persistent TCP echo server on `port`.
fn echo_server(port: u16) -> Command {
    let mut cmd = Command::new(testkit::busybox().expect("busybox-static"));
    cmd.args(["nc", "-ll", "-p", &port.to_string(), "-e", "/bin/cat"]);
    cmd
}

#[test]
fn three_hosts_reach_each_other_and_processes_run_inside_them() {
    let cluster = Cluster::new(3).unwrap();
    let addrs: Vec<Ipv4Addr> = cluster.hosts().iter().map(|h| h.addr()).collect();
    assert_eq!(addrs.len(), 3);
    assert!(addrs[0] != addrs[1] && addrs[1] != addrs[2] && addrs[0] != addrs[2]);
    assert_reachability(&cluster, &[]);

    // A process sees its host's network: its address, and loopback up.
    let mut cmd = Command::new(testkit::busybox().unwrap());
    cmd.args(["ip", "-o", "addr", "show"]);
    let out = cluster.host(2).output(cmd).unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("inet {}/24", addrs[2])), "{text}");
    assert!(text.contains("inet 127.0.0.1/8"), "{text}");
    assert!(!text.contains("inet6"), "hosts speak IPv4 only: {text}");
    assert!(!text.contains(&addrs[0].to_string()), "{text}");

    // TCP across hosts, to a real server process.
    let server = cluster.host(1).spawn(echo_server(7000)).unwrap();
    let addr = SocketAddr::from((addrs[1], 7000));
    assert!(
        poll_until(Duration::from_secs(10), || echo(
            &cluster,
            0,
            addr,
            Duration::from_millis(500)
        )
        .as_deref()
            == Some("hello\n")),
        "no echo from host 1"
    );
    drop(server);
    drop_and_check(cluster);
}

#[test]
fn a_process_output_goes_to_its_log_files() {
    let cluster = Cluster::new(1).unwrap();
    let mut cmd = Command::new(testkit::busybox().unwrap());
    cmd.args(["sh", "-c", "echo out; echo err >&2; exit 3"]);
    let mut p = cluster.host(0).spawn(cmd).unwrap();
    let status = p.wait().unwrap();
    assert_eq!(status.code(), Some(3));
    assert_eq!(p.stdout(), "out\n");
    assert_eq!(p.stderr(), "err\n");
    assert!(p.stdout_path().starts_with(cluster.host(0).dir()));
    drop(p);
    drop_and_check(cluster);
}

#[test]
fn mistakes_are_errors_that_say_what_and_where() {
    let cluster = Cluster::new(2).unwrap();
    let err = cluster
        .host(1)
        .spawn(Command::new("/nonexistent/berth-test-program"))
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("host 1: starting berth-test-program-0: running"),
        "{err}"
    );
    assert!(err.contains("No such file or directory"), "{err}");
    let err = cluster.partition(0, 5).unwrap_err().to_string();
    assert_eq!(err, "a cluster has 2 hosts: host 5 does not exist");
    assert!(cluster.faults().blocked.is_empty());
    let err = cluster.loss(0, 101).unwrap_err().to_string();
    assert_eq!(err, "loss of 101% is not a percentage (0-100)");
    let mut cmd = Command::new(testkit::busybox().unwrap());
    cmd.args(["sh", "-c", "echo broken >&2; exit 4"]);
    let err = cluster.host(0).output(cmd).unwrap_err().to_string();
    assert!(err.starts_with("host 0: "), "{err}");
    assert!(
        err.contains("exit status: 4") && err.ends_with(": broken"),
        "{err}"
    );
    assert!(Cluster::new(0).is_err());
    drop_and_check(cluster);
}

#[test]
fn a_partition_cuts_both_ways_only_between_its_hosts_and_heals() {
    let cluster = Cluster::new(3).unwrap();
    cluster.partition(0, 1).unwrap();
    assert_reachability(&cluster, &[(0, 1), (1, 0)]);
    cluster.heal().unwrap();
    assert_reachability(&cluster, &[]);

    cluster.isolate(2).unwrap();
    assert_reachability(&cluster, &[(0, 2), (2, 0), (1, 2), (2, 1)]);
    cluster.heal_link(2, 0).unwrap();
    assert_reachability(&cluster, &[(1, 2), (2, 1)]);
    cluster.heal_all().unwrap();
    assert_reachability(&cluster, &[]);
    drop_and_check(cluster);
}

#[test]
fn a_partition_also_stalls_connections_open_before_it() {
    let cluster = Cluster::new(2).unwrap();
    let server = cluster.host(1).spawn(echo_server(7001)).unwrap();
    let addr = SocketAddr::from((cluster.addr(1), 7001));
    let timeout = Duration::from_millis(500);
    assert!(poll_until(Duration::from_secs(10), || echo(
        &cluster, 0, addr, timeout
    )
    .is_some()));
    let mut conn = cluster
        .host(0)
        .run_in(move || TcpStream::connect_timeout(&addr, timeout))
        .unwrap()
        .unwrap();
    conn.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    conn.write_all(b"before\n").unwrap();
    let mut buf = [0u8; 7];
    conn.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"before\n");

    cluster.partition(0, 1).unwrap();
    conn.write_all(b"during\n").unwrap();
    assert!(
        conn.read(&mut buf).is_err(),
        "an answer crossed the partition"
    );

    // After healing, TCP retransmits and the stalled line comes through.
    cluster.heal().unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    conn.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"during\n");
    drop(conn);
    drop(server);
    drop_and_check(cluster);
}

#[test]
fn a_one_way_partition_drops_one_direction_only() {
    let cluster = Cluster::new(3).unwrap();
    cluster.partition_one_way(0, 1).unwrap();
    assert_reachability(&cluster, &[(0, 1)]);
    assert_eq!(cluster.faults().blocked.len(), 1);
    cluster.heal().unwrap();
    assert_reachability(&cluster, &[]);
    drop_and_check(cluster);
}

#[test]
fn kill9_stop_and_cont_do_what_they_say() {
    let cluster = Cluster::new(2).unwrap();
    let mut server = cluster.host(1).spawn(echo_server(7002)).unwrap();
    let addr = SocketAddr::from((cluster.addr(1), 7002));
    let quick = Duration::from_millis(300);
    assert!(poll_until(Duration::from_secs(10), || {
        echo(&cluster, 0, addr, quick).is_some()
    }));

    server.stop().unwrap();
    assert!(server.is_stopped());
    // The kernel still completes the handshake into the listen backlog, but nothing
    // accepts it, so nothing answers.
    assert_eq!(echo(&cluster, 0, addr, quick), None);
    assert_eq!(
        server.try_wait().unwrap(),
        None,
        "a stopped process is not gone"
    );

    server.cont().unwrap();
    assert!(!server.is_stopped());
    assert!(poll_until(Duration::from_secs(10), || {
        echo(&cluster, 0, addr, quick).as_deref() == Some("hello\n")
    }));

    let status = server.kill9().unwrap();
    assert_eq!(status.signal(), Some(9));
    assert!(!std::path::Path::new(&format!("/proc/{}", server.pid())).exists());
    assert_eq!(echo(&cluster, 0, addr, quick), None);
    assert!(
        server.stop().is_err(),
        "signalling a reaped process must fail"
    );
    drop(server);
    drop_and_check(cluster);
}

#[test]
fn a_frozen_host_answers_nothing_until_thawed() {
    let cluster = Cluster::new(2).unwrap();
    // The echo server and the cat it forks per connection are all the host's.
    let mut server = cluster.host(1).spawn(echo_server(7003)).unwrap();
    let addr = SocketAddr::from((cluster.addr(1), 7003));
    let quick = Duration::from_millis(300);
    assert!(poll_until(Duration::from_secs(10), || {
        echo(&cluster, 0, addr, quick).is_some()
    }));
    // The server, and maybe the `cat` of the probe's connection, not yet gone.
    assert!(cluster.pids(1).unwrap().contains(&(server.pid() as i32)));
    assert!(cluster.pids(0).unwrap().is_empty());

    cluster.freeze(1).unwrap();
    assert!(poll_until(Duration::from_secs(10), || server.is_stopped()));
    assert_eq!(echo(&cluster, 0, addr, quick), None);
    cluster.thaw(1).unwrap();
    assert!(poll_until(Duration::from_secs(10), || {
        echo(&cluster, 0, addr, quick).as_deref() == Some("hello\n")
    }));
    assert!(!server.is_stopped());
    server.kill9().unwrap();
    drop(server);
    drop_and_check(cluster);
}

#[test]
fn loss_drops_the_share_it_says() {
    let cluster = Cluster::new(2).unwrap();
    cluster.loss(1, 100).unwrap();
    assert_eq!(datagrams(&cluster, 0, 1, 50), 0);
    assert_eq!(datagrams(&cluster, 1, 0, 50), 0);
    // About half of 1000 (binomial: standard deviation about 16), with bounds 10
    // deviations wide: a failure means the rule is wrong, not bad luck.
    cluster.loss(1, 50).unwrap();
    let got = datagrams(&cluster, 0, 1, 1000);
    assert!(
        (340..=660).contains(&got),
        "{got} of 1000 arrived with 50% loss"
    );
    cluster.loss(1, 0).unwrap();
    assert_eq!(datagrams(&cluster, 0, 1, 200), 200);
    assert_eq!(datagrams(&cluster, 1, 0, 200), 200);
    drop_and_check(cluster);
}

/// The `overlimits` counter of the root qdisc of `dev` in host `i`.
fn overlimits(cluster: &Cluster, i: usize, dev: &str) -> u64 {
    let mut cmd = Command::new("tc");
    cmd.args(["-s", "qdisc", "show", "dev", dev]);
    let out = cluster.host(i).output(cmd).expect("tc -s qdisc show");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.split_once("overlimits ")
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Sends `bytes` over TCP from host 0 to host 1 and returns how long it took.
fn bulk(cluster: &Cluster, bytes: usize) -> Duration {
    let addr = cluster.addr(1);
    let listener = cluster
        .host(1)
        .run_in(move || TcpListener::bind((addr, 0)))
        .expect("entering host 1")
        .expect("listening in host 1");
    let dest = listener.local_addr().expect("local address");
    let reader = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().expect("accept");
        let mut sink = Vec::new();
        conn.read_to_end(&mut sink).expect("read");
        sink.len()
    });
    let start = Instant::now();
    let mut conn = cluster
        .host(0)
        .run_in(move || TcpStream::connect(dest))
        .expect("entering host 0")
        .expect("connecting from host 0");
    conn.write_all(&vec![7u8; bytes]).expect("sending");
    drop(conn);
    assert_eq!(reader.join().expect("reader thread"), bytes);
    start.elapsed()
}

#[test]
fn a_slow_link_is_shaped_by_a_token_bucket_and_heals() {
    let cluster = Cluster::new(2).unwrap();
    let bytes = 256 * 1024;
    let fast = bulk(&cluster, bytes);
    cluster.slow_link(0, 8_000_000).unwrap();
    assert_eq!(overlimits(&cluster, 0, "eth0"), 0);
    let slow = bulk(&cluster, bytes);
    // The shaper held packets back: it would not count overlimits otherwise.
    assert!(overlimits(&cluster, 0, "eth0") > 0);
    eprintln!("256 KiB from host 0 to host 1: {fast:?} unshaped, {slow:?} at 8 Mbit/s");
    cluster.heal_all().unwrap();
    let mut cmd = Command::new("tc");
    cmd.args(["qdisc", "show", "dev", "eth0"]);
    let out = cluster.host(0).output(cmd).unwrap();
    assert!(!String::from_utf8_lossy(&out.stdout).contains("tbf"));
    drop_and_check(cluster);
}

#[test]
fn dropping_a_cluster_removes_everything_even_when_the_test_panics() {
    let mut seen = None;
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let cluster = Cluster::new(2).unwrap();
        cluster.partition(0, 1).unwrap();
        cluster.loss(1, 10).unwrap();
        cluster.slow_link(0, 1_000_000).unwrap();
        // A process the test holds no handle on (a shell's background child), as a
        // daemon's children would be: the cluster must kill it.
        let mut cmd = Command::new(testkit::busybox().unwrap());
        cmd.args(["sh", "-c", "busybox sleep 1000 & echo $!; wait"]);
        let shell = cluster.host(1).spawn(cmd).unwrap();
        assert!(poll_until(Duration::from_secs(10), || shell
            .stdout()
            .ends_with('\n')));
        let orphan: u32 = shell.stdout().trim().parse().unwrap();
        assert!(!leftovers(cluster.prefix()).is_empty());
        seen = Some((
            cluster.prefix().to_string(),
            orphan,
            cluster.dir().to_path_buf(),
        ));
        panic!("the test fails here");
    }));
    let panic = result.unwrap_err();
    assert_eq!(panic.downcast_ref::<&str>(), Some(&"the test fails here"));
    let (prefix, orphan, dir) = seen.unwrap();
    assert_eq!(leftovers(&prefix), Vec::<String>::new());
    // Unwinding dropped the shell's handle first, which killed the shell only; the
    // cluster killed its orphan, which init then reaps (a zombie meanwhile).
    assert!(poll_until(Duration::from_secs(10), || {
        std::fs::read_to_string(format!("/proc/{orphan}/stat"))
            .map(|s| s.contains(") Z "))
            .unwrap_or(true)
    }));
    // The logs of a failed test are kept, and say where.
    assert!(dir.is_dir());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Kills its child process when dropped, so a failing parent leaves no child.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const CHILD_ROLE: &str = "BERTH_HOSTS_TEST_CHILD";

/// A test process killed with SIGKILL never runs `Drop`; the next cluster's sweep
/// removes what it left. This test runs itself as a child process (selected by an
/// environment variable) that makes a cluster with a fault and a process, prints the
/// prefix, and waits to be killed.
#[test]
fn a_cluster_whose_test_was_killed_is_swept_by_the_next_one() {
    if std::env::var_os(CHILD_ROLE).is_some() {
        let cluster = Cluster::new(2).unwrap();
        cluster.partition(0, 1).unwrap();
        let mut cmd = Command::new(testkit::busybox().unwrap());
        cmd.args(["sleep", "1000"]);
        let _sleeper = cluster.host(1).spawn(cmd).unwrap();
        println!("prefix {}", cluster.prefix());
        std::thread::sleep(Duration::from_secs(120));
        panic!("the parent test should have killed this child");
    }
    let mut child = KillOnDrop(
        Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "a_cluster_whose_test_was_killed_is_swept_by_the_next_one",
                "--nocapture",
            ])
            .env(CHILD_ROLE, "1")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut lines =
        std::io::BufRead::lines(std::io::BufReader::new(child.0.stdout.take().unwrap()));
    let prefix = lines
        .find_map(|l| l.ok()?.strip_prefix("prefix ").map(str::to_string))
        .expect("the child printed no prefix");
    let before = leftovers(&prefix);
    assert!(before.iter().any(|l| l.starts_with("netns")), "{before:?}");
    assert!(
        before.iter().any(|l| l.starts_with("process")),
        "{before:?}"
    );

    child.0.kill().unwrap();
    child.0.wait().unwrap();
    // Nothing but a sweep cleans up after the child. Another test's `Cluster::new`
    // may sweep it first (tests run in parallel), so whichever sweep ran, the result
    // is what is checked.
    testkit::hosts::sweep_stale();
    assert_eq!(leftovers(&prefix), Vec::<String>::new());
    let dirs: Vec<_> = std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(&prefix))
        .collect();
    assert!(dirs.is_empty(), "{dirs:?}");
}
